/*
 * Opens and connects through the 32-bit syscall entry (`int $0x80`) from
 * a 64-bit program: no multilib needed. Every pointer the 32-bit entry
 * takes must be below 4 GiB, so arguments live in a MAP_32BIT mapping.
 *
 *   int80 open|openat|openat2|creat PATH MARKER
 *       open PATH, read it (64-bit read) and write it to stdout; prints
 *       "open failed: -ERRNO" and exits 2 when the open fails.
 *   int80 connect|socketcall IPV4 PORT MARKER
 *       TCP connect, then send "PAYLOAD" and print "connect: RES".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define NR32_OPEN 5
#define NR32_CREAT 8
#define NR32_SOCKETCALL 102
#define NR32_OPENAT 295
#define NR32_CONNECT 362
#define NR32_OPENAT2 437
#define SYS_CONNECT 3
#define AT_FDCWD32 (-100)

static long int80(long nr, long a, long b, long c, long d)
{
	long ret;

	asm volatile("int $0x80"
		     : "=a"(ret)
		     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d)
		     : "memory", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
	return ret;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: int80 open|openat|openat2|creat PATH MARKER | "
				"int80 connect|socketcall IPV4 PORT MARKER\n");
		return 1;
	}
	char *low = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
			 -1, 0);

	if (low == MAP_FAILED) {
		perror("mmap MAP_32BIT");
		return 1;
	}
	const char *cmd = argv[1];

	if (!strcmp(cmd, "connect") || !strcmp(cmd, "socketcall")) {
		struct sockaddr_in *sin = (struct sockaddr_in *)low;
		unsigned *args = (unsigned *)(low + 64);
		int s = socket(AF_INET, SOCK_STREAM, 0);
		long ret;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(atoi(argv[3]));
		inet_pton(AF_INET, argv[2], &sin->sin_addr);
		if (!strcmp(cmd, "connect")) {
			ret = int80(NR32_CONNECT, s, (long)sin, sizeof(*sin), 0);
		} else {
			args[0] = s;
			args[1] = (unsigned)(unsigned long)sin;
			args[2] = sizeof(*sin);
			ret = int80(NR32_SOCKETCALL, SYS_CONNECT, (long)args, 0, 0);
		}
		if (ret == 0)
			send(s, "PAYLOAD", 7, 0);
		printf("connect: %ld\n", ret);
		return 0;
	}
	char *path = low;
	struct open_how *how = (struct open_how *)(low + 4096);
	long fd;

	strncpy(path, argv[2], 4095);
	if (!strcmp(cmd, "open")) {
		fd = int80(NR32_OPEN, (long)path, O_RDONLY, 0, 0);
	} else if (!strcmp(cmd, "openat")) {
		fd = int80(NR32_OPENAT, AT_FDCWD32, (long)path, O_RDONLY, 0);
	} else if (!strcmp(cmd, "openat2")) {
		memset(how, 0, sizeof(*how));
		how->flags = O_RDONLY;
		fd = int80(NR32_OPENAT2, AT_FDCWD32, (long)path, (long)how, sizeof(*how));
	} else if (!strcmp(cmd, "creat")) {
		fd = int80(NR32_CREAT, (long)path, 0600, 0, 0);
	} else {
		fprintf(stderr, "unknown command %s\n", cmd);
		return 1;
	}
	if (fd < 0) {
		printf("open failed: %ld\n", fd);
		return 2;
	}
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n > 0)
		fwrite(buf, 1, n, stdout);
	return 0;
}
