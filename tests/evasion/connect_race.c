// A connect whose address another thread keeps flipping between two
// IPv4 addresses: what the kernel copies is whichever was there at that
// instant. Used by tests/test_evasion_net.py.
//
//   connect_race loop A B PORT N   N connects in this process; prints, per
//                                  connect, "ok" or "refused"
//   connect_race fork A B PORT N   N children, one connect each; prints,
//                                  per child, "ok", "refused" or "killed"
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in addr;
static in_addr_t a, b;

static volatile int flipping;

static void *flip(void *arg)
{
	volatile in_addr_t *p = &addr.sin_addr.s_addr;

	(void)arg;
	flipping = 1;
	for (;;) {
		*p = a;
		*p = b;
	}
	return NULL;
}

static int one(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int r = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
	int err = errno;

	close(fd);
	if (r == 0)
		return 0;
	return err == ECONNREFUSED ? 1 : 2;
}

static void start_flipper(void)
{
	pthread_t t;

	if (pthread_create(&t, NULL, flip, NULL)) {
		perror("pthread_create");
		exit(3);
	}
	while (!flipping)
		;
}

int main(int argc, char **argv)
{
	static const char *names[] = { "ok", "refused", "other" };

	if (argc != 6) {
		fprintf(stderr, "usage: %s loop|fork A B PORT N\n", argv[0]);
		return 2;
	}
	a = inet_addr(argv[2]);
	b = inet_addr(argv[3]);
	addr.sin_family = AF_INET;
	addr.sin_port = htons(atoi(argv[4]));
	addr.sin_addr.s_addr = a;
	int n = atoi(argv[5]);

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(argv[1], "loop")) {
		start_flipper();
		for (int i = 0; i < n; i++)
			puts(names[one()]);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			start_flipper();
			_exit(one());
		}
		int st = 0;

		waitpid(pid, &st, 0);
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
			puts("killed");
		else if (WIFEXITED(st))
			puts(names[WEXITSTATUS(st) > 2 ? 2 : WEXITSTATUS(st)]);
		else
			puts("other");
	}
	return 0;
}
