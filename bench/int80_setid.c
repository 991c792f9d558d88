/* setresgid32 through the 32-bit entry (`int $0x80`), N times, toggling
 * between gids 1 and 0: each call a change. The 32-bit workload of
 * bench/priv_cost.py (run as root). */
#include <stdio.h>
#include <stdlib.h>

#include "../tests/priv/int80.h"

#define NR32_SETRESGID32 210

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s COUNT\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]);
	for (long i = 0; i < n; i++) {
		long g = (i + 1) % 2, ret = int80(NR32_SETRESGID32, g, g, g);

		if (ret) {
			fprintf(stderr, "setresgid32: %ld\n", ret);
			return 1;
		}
	}
	return int80(NR32_SETRESGID32, 0, 0, 0) != 0;
}
