// Opens a file and closes it again, COUNT times: a flood of opens that a
// policy posts, from whatever uid runs it. Used by tests/test_evasion_net.py,
// which builds it with -static so that any uid can run it.
//
//   openflood [-p MS] [-k PATH2 -b N] PATH COUNT
//
// -p: at least MS milliseconds from one open to the next (a paced series).
// -k: then open PATH2 once (a path a sigkill rule selects: it does not
//     come back), right after N more opens of PATH within one second of
//     CLOCK_BOOTTIME, the clock the kernel's per-uid budgets count in: the
//     open of PATH2 is made while this uid is over any budget below N.
// Prints how many opens of PATH succeeded.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long opened;

static void open_close(const char *path)
{
	int fd = open(path, O_RDONLY);

	if (fd >= 0) {
		opened++;
		close(fd);
	}
}

static time_t boot_second(void)
{
	struct timespec t;

	clock_gettime(CLOCK_BOOTTIME, &t);
	return t.tv_sec;
}

int main(int argc, char **argv)
{
	const char *last = NULL;
	long pace_ms = 0, burst = 0;
	int opt;

	while ((opt = getopt(argc, argv, "p:k:b:")) != -1) {
		switch (opt) {
		case 'p': pace_ms = atol(optarg); break;
		case 'k': last = optarg; break;
		case 'b': burst = atol(optarg); break;
		default: goto usage;
		}
	}
	if (argc - optind != 2 || (last && burst <= 0))
		goto usage;
	const char *path = argv[optind];
	long count = atol(argv[optind + 1]);
	struct timespec pace = { pace_ms / 1000, (pace_ms % 1000) * 1000000L };

	for (long i = 0; i < count; i++) {
		open_close(path);
		if (pace_ms)
			nanosleep(&pace, NULL);
	}
	while (last) {
		time_t second = boot_second();
		long n = 0;

		while (n < burst && boot_second() == second) {
			open_close(path);
			n++;
		}
		if (n == burst && boot_second() == second)
			break;
	}
	printf("%ld\n", opened);
	fflush(stdout);
	if (last)
		close(open(last, O_RDONLY));
	return 0;
usage:
	fprintf(stderr, "usage: %s [-p MS] [-k PATH2 -b N] PATH COUNT\n", argv[0]);
	return 2;
}
