// Runs a program again and again, one run at a time, each waited for: an
// exec storm, or a paced series of execs. Used by tests/test_evasion_net.py,
// which builds it with -static: an exec of a static binary costs the least
// (no dynamic loader), so under emulation a storm of it outruns a budget
// that a paced series stays within.
//
//   spawn -t SECONDS [-p MS] PROG [ARG...]   run PROG ARG... for SECONDS
//                                            (0: until killed); print how
//                                            many runs started
//   spawn -n COUNT [-p MS] PROG [ARG...]     run PROG ARG... I, for I from 1
//                                            to COUNT; print COUNT
//   spawn                                    exit at once (what a storm runs)
//
// -p: at least MS milliseconds from the start of one run to the next.
// -c: after each run, write the count so far over the start of standard
//     output (a file): a watcher sees how far a storm has got.
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int usage(const char *self)
{
	fprintf(stderr, "usage: %s -t SECONDS|-n COUNT [-p MS] [-c] PROG [ARG...]\n", self);
	return 2;
}

int main(int argc, char **argv)
{
	double seconds = -1, period = 0;
	long count = -1;
	int opt, progress = 0;

	if (argc == 1)
		return 0;
	while ((opt = getopt(argc, argv, "+t:n:p:c")) != -1) {
		switch (opt) {
		case 't': seconds = atof(optarg); break;
		case 'n': count = atol(optarg); break;
		case 'p': period = atof(optarg) / 1000; break;
		case 'c': progress = 1; break;
		default: return usage(argv[0]);
		}
	}
	if (optind >= argc || (seconds < 0) == (count < 0))
		return usage(argv[0]);
	char **run = calloc(argc - optind + 2, sizeof(*run));
	char number[24];

	if (!run)
		return 1;
	for (int i = optind; i < argc; i++)
		run[i - optind] = argv[i];
	if (count >= 0)
		run[argc - optind] = number;
	double start = now(), next = start;
	long n = 0;

	while (count >= 0 ? n < count : seconds == 0 || now() - start < seconds) {
		double wait = next - now();

		if (wait > 0)
			usleep(wait * 1e6);
		next = now() + period;
		snprintf(number, sizeof(number), "%ld", n + 1);
		pid_t pid = fork();

		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			execv(run[0], run);
			_exit(127);
		}
		int status;

		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "%s: run %ld failed\n", run[0], n + 1);
			return 1;
		}
		n++;
		if (progress) {
			int len = snprintf(number, sizeof(number), "%ld\n", n);

			if (pwrite(1, number, len, 0) != len) {
				perror("pwrite");
				return 1;
			}
		}
	}
	printf("%ld\n", n);
	return 0;
}
