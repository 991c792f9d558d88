/*
 * Opens, reads and connects through io_uring only: no open, read or
 * connect syscall (raw io_uring_setup/io_uring_enter, no liburing).
 *
 *   uring open PATH [openat2] [async] [fixed] MARKER
 *       open PATH (IORING_OP_OPENAT, or _OPENAT2), read it with
 *       IORING_OP_READ and write what it read to stdout; "async" forces
 *       the requests into an io-wq worker (IOSQE_ASYNC), "fixed" opens
 *       into fixed-file slot 0. Prints "open failed: -ERRNO" and exits 2
 *       when the open fails. "linked" asks for no CQE of the open
 *       (IOSQE_CQE_SKIP_SUCCESS) and links the read to it, on the fd the
 *       open will get (the lowest free one): the program learns nothing
 *       from the open, and the kernel reads right after it.
 *   uring connect IPV4 PORT [async] MARKER
 *       TCP connect (IORING_OP_CONNECT), then prints "connect: RES".
 *
 * The last argument is a marker the test finds the process by.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void ring_init(struct ring *r)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	r->fd = syscall(__NR_io_uring_setup, 8, &p);
	if (r->fd < 0)
		die("io_uring_setup");
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
			IORING_OFF_SQ_RING);
	char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
			IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		die("mmap");
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* Submit n SQEs and wait for one completion; returns its cqe->res. */
static int ring_run_n(struct ring *r, const struct io_uring_sqe *sqe, unsigned n)
{
	unsigned tail = *r->sq_tail;

	for (unsigned i = 0; i < n; i++) {
		unsigned idx = (tail + i) & *r->sq_mask;

		r->sqes[idx] = sqe[i];
		r->sq_array[idx] = idx;
	}
	__atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, r->fd, n, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		die("io_uring_enter");
	unsigned head = *r->cq_head;

	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
		fprintf(stderr, "no completion\n");
		exit(1);
	}
	int res = r->cqes[head & *r->cq_mask].res;

	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static int ring_run(struct ring *r, const struct io_uring_sqe *sqe)
{
	return ring_run_n(r, sqe, 1);
}

static int has(int argc, char **argv, const char *word)
{
	for (int i = 3; i < argc - 1; i++)
		if (!strcmp(argv[i], word))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	struct ring r;
	struct io_uring_sqe sqe;

	if (argc < 4) {
		fprintf(stderr, "usage: uring open PATH [openat2] [async] [fixed] MARKER | "
				"uring connect IPV4 PORT [async] MARKER\n");
		return 1;
	}
	ring_init(&r);
	__u8 async = has(argc, argv, "async") ? IOSQE_ASYNC : 0;

	memset(&sqe, 0, sizeof(sqe));
	if (!strcmp(argv[1], "open")) {
		static struct open_how how = { .flags = O_RDONLY };
		int fixed = has(argc, argv, "fixed");

		if (fixed) {
			int fds[1] = { -1 };

			if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_FILES, fds, 1) < 0)
				die("IORING_REGISTER_FILES");
			sqe.file_index = 1; /* slot 0 */
		}
		sqe.opcode = has(argc, argv, "openat2") ? IORING_OP_OPENAT2 : IORING_OP_OPENAT;
		sqe.flags = async;
		sqe.fd = AT_FDCWD;
		sqe.addr = (unsigned long)argv[2];
		if (sqe.opcode == IORING_OP_OPENAT2) {
			sqe.len = sizeof(how);
			sqe.off = (unsigned long)&how;
		} else {
			sqe.open_flags = O_RDONLY;
		}
		static char buf[4096];

		if (has(argc, argv, "linked")) {
			struct io_uring_sqe two[2];
			int next = dup(0); /* the lowest free fd, which the open gets */

			close(next);
			sqe.flags |= IOSQE_CQE_SKIP_SUCCESS | IOSQE_IO_LINK;
			two[0] = sqe;
			memset(&two[1], 0, sizeof(two[1]));
			two[1].opcode = IORING_OP_READ;
			two[1].fd = next;
			two[1].addr = (unsigned long)buf;
			two[1].len = sizeof(buf);
			int n = ring_run_n(&r, two, 2);

			if (n < 0) {
				printf("open failed: %d\n", n);
				return 2;
			}
			fwrite(buf, 1, n, stdout);
			return 0;
		}
		int fd = ring_run(&r, &sqe);

		if (fd < 0) {
			printf("open failed: %d\n", fd);
			return 2;
		}
		memset(&sqe, 0, sizeof(sqe));
		sqe.opcode = IORING_OP_READ;
		sqe.flags = async | (fixed ? IOSQE_FIXED_FILE : 0);
		sqe.fd = fixed ? 0 : fd;
		sqe.addr = (unsigned long)buf;
		sqe.len = sizeof(buf);
		int n = ring_run(&r, &sqe);

		if (n > 0)
			fwrite(buf, 1, n, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "connect")) {
		static struct sockaddr_in sin;
		int s = socket(AF_INET, SOCK_STREAM, 0);

		if (s < 0)
			die("socket");
		sin.sin_family = AF_INET;
		sin.sin_port = htons(atoi(argv[3]));
		inet_pton(AF_INET, argv[2], &sin.sin_addr);
		sqe.opcode = IORING_OP_CONNECT;
		sqe.flags = has(argc, argv, "async") ? IOSQE_ASYNC : 0;
		sqe.fd = s;
		sqe.addr = (unsigned long)&sin;
		sqe.off = sizeof(sin);
		printf("connect: %d\n", ring_run(&r, &sqe));
		return 0;
	}
	fprintf(stderr, "unknown command %s\n", argv[1]);
	return 1;
}
