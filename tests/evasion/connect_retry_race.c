// A connect to a selected peer while another thread keeps the same socket
// connecting elsewhere and undoing it. The security hook runs before
// connect() locks the socket: it can find the socket connecting, and the
// connect then starts a connection of its own once the other thread has
// disconnected the socket. Used by tests/test_evasion_net.py, in a
// network namespace of its own.
//
//   connect_retry_race drop|keep|fastopen HOLE PEER PORT N SECONDS
//
// HOLE:PORT gets a listener whose queue this program fills and never
// accepts from: the kernel drops every later SYN to it, so a connect
// there stays in SYN_SENT. PEER:PORT gets a listener too. A thread
// connects the socket to HOLE without waiting, then disconnects it
// (connect with AF_UNSPEC), over and over; the main thread connects the
// same socket to PEER, N times at most and for SECONDS at most. `drop`:
// it disconnects the socket after each connect that started a
// connection, so its hook only ever finds the socket connecting to HOLE
// (or to nothing). `keep`: it leaves the connection, so its next connect
// is to the peer the socket has, a retry for all the hook can tell.
// `fastopen`: as `keep`, with a TCP Fast Open (sendto MSG_FASTOPEN) for
// each connect; PEER's listener gives no cookie, so each one that starts
// a connection sends a bare SYN and answers EINPROGRESS as a connect does.
// Prints "started S accepted A tries T busy B": the connects to PEER that
// started a connection (EINPROGRESS: the socket does not wait), the
// connections PEER's listener then accepted, the connects to PEER made,
// and those that found the socket connecting to HOLE (EALREADY: the
// threads did run at once).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in hole, peer;
static const struct sockaddr unspec = { .sa_family = AF_UNSPEC };
static int fd;
static volatile int stop, running;

static void die(const char *what)
{
	perror(what);
	exit(3);
}

static int listener(const struct sockaddr_in *at, int backlog)
{
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);

	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(l, (const struct sockaddr *)at, sizeof(*at)) || listen(l, backlog))
		die("listener");
	return l;
}

/* About as long as a connect: the socket spends about as much time
 * connecting to HOLE as disconnected. */
static void linger(void)
{
	for (volatile int i = 0; i < 3000; i++)
		;
}

static void *disconnector(void *arg)
{
	(void)arg;
	running = 1;
	while (!stop) {
		connect(fd, (const struct sockaddr *)&hole, sizeof(hole));
		linger();
		connect(fd, &unspec, sizeof(unspec));
		linger();
	}
	return NULL;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: %s drop|keep|fastopen HOLE PEER PORT N SECONDS\n", argv[0]);
		return 2;
	}
	int drop = !strcmp(argv[1], "drop"), fastopen = !strcmp(argv[1], "fastopen");

	argv++;
	hole.sin_family = peer.sin_family = AF_INET;
	hole.sin_port = peer.sin_port = htons(atoi(argv[3]));
	hole.sin_addr.s_addr = inet_addr(argv[1]);
	peer.sin_addr.s_addr = inet_addr(argv[2]);
	int n = atoi(argv[4]);

	double deadline = now() + atof(argv[5]);

	/* A backlog of 0 holds one connection: the filler's. */
	listener(&hole, 0);
	int filler = socket(AF_INET, SOCK_STREAM, 0);

	if (filler < 0 || connect(filler, (const struct sockaddr *)&hole, sizeof(hole)))
		die("filling the hole's queue");
	int l = listener(&peer, 4096);

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || fcntl(fd, F_SETFL, O_NONBLOCK))
		die("socket");
	pthread_t t;

	if (pthread_create(&t, NULL, disconnector, NULL))
		die("pthread_create");
	while (!running)
		;
	int started = 0, tries = 0, busy = 0;

	while (tries < n && now() < deadline) {
		tries++;
		int r = fastopen ? (int)sendto(fd, "x", 1, MSG_FASTOPEN, (const struct sockaddr *)&peer,
					       sizeof(peer))
				 : connect(fd, (const struct sockaddr *)&peer, sizeof(peer));

		if (r < 0 && errno == EINPROGRESS) {
			started++;
			if (drop)
				connect(fd, &unspec, sizeof(unspec));
		} else if (r < 0 && errno == EALREADY) {
			busy++;
		}
		linger();
	}
	stop = 1;
	pthread_join(t, NULL);
	/* Let loopback finish the last handshakes, then take what is queued. */
	usleep(200000);
	if (fcntl(l, F_SETFL, O_NONBLOCK))
		die("fcntl");
	int accepted = 0, c;

	while ((c = accept(l, NULL, NULL)) >= 0) {
		accepted++;
		close(c);
	}
	printf("started %d accepted %d tries %d busy %d\n", started, accepted, tries, busy);
	return 0;
}
