/* Exec storm driver for bench/exec_storm.py: N times fork() + execv(PATH,
 * [PATH, MARKER]) + waitpid(), one child at a time, like a shell loop but
 * without the shell's per-iteration overhead.
 *
 *   cc -O2 -o execloop execloop.c && ./execloop 20000 /bin/true storm-XYZ
 *
 * Exits non-zero if any child failed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s N PATH MARKER\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[1], NULL, 10);
	char *child_argv[] = { argv[2], argv[3], NULL };
	long failed = 0;

	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			execv(argv[2], child_argv);
			_exit(127);
		}
		int status;
		while (waitpid(pid, &status, 0) < 0) {
			if (errno != EINTR) {
				perror("waitpid");
				return 1;
			}
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	if (failed) {
		fprintf(stderr, "%ld of %ld children failed\n", failed, n);
		return 1;
	}
	return 0;
}
