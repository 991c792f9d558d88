// openat2 whose struct open_how another thread keeps flipping between
// O_RDONLY and O_WRONLY: the kernel opens with whichever it copied. Prints
// the access mode each fd really got ("r" or "w"), one line per open.
// Used by tests/test_evasion_net.py.
//
//   openat2_race PATH N
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct open_how how;

static volatile int flipping;

static void *flip(void *arg)
{
	volatile __u64 *p = &how.flags;

	(void)arg;
	flipping = 1;
	for (;;) {
		*p = O_RDONLY;
		*p = O_WRONLY;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t;

	if (argc != 3) {
		fprintf(stderr, "usage: %s PATH N\n", argv[0]);
		return 2;
	}
	int n = atoi(argv[2]);

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pthread_create(&t, NULL, flip, NULL))
		return 3;
	while (!flipping)
		;
	for (int i = 0; i < n; i++) {
		int fd = syscall(SYS_openat2, AT_FDCWD, argv[1], &how, sizeof(how));

		if (fd < 0) {
			perror("openat2");
			return 1;
		}
		puts((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY ? "w" : "r");
		close(fd);
	}
	return 0;
}
