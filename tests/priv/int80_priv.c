/*
 * Credential and file-attribute calls through the 32-bit syscall entry
 * (`int $0x80`) from a 64-bit program, as tests/evasion/int80.c does for
 * opens: the 64-bit syscall tracepoints never see them.
 *
 *   int80_priv setresuid32 UID MARKER     setresuid32(UID, UID, UID)
 *   int80_priv chmod PATH MODE MARKER     chmod(PATH, MODE), MODE in octal
 *   int80_priv chown32 PATH UID MARKER    chown32(PATH, UID, -1)
 *   int80_priv execve RUID PATH MARKER    setresuid(RUID, -1, -1) through the
 *                                         64-bit entry, then execve(PATH,
 *                                         [PATH, MARKER], []) through the 32-bit
 *
 * Prints "ret: N" (N = the syscall's result, -errno on failure).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "int80.h"

#define NR32_EXECVE 11
#define NR32_CHMOD 15
#define NR32_SETRESUID32 208
#define NR32_CHOWN32 212

/* The 32-bit entry takes 32-bit pointers: the path lives below 4 GiB. */
static char *low_copy(const char *s)
{
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
		       -1, 0);

	if (p == MAP_FAILED || strlen(s) >= 8192) {
		perror("mmap");
		exit(1);
	}
	strcpy(p, s);
	return p;
}

int main(int argc, char **argv)
{
	long ret;

	if (argc == 4 && !strcmp(argv[1], "setresuid32")) {
		long uid = strtol(argv[2], NULL, 10);

		ret = int80(NR32_SETRESUID32, uid, uid, uid);
	} else if (argc == 5 && !strcmp(argv[1], "chmod")) {
		ret = int80(NR32_CHMOD, (long)low_copy(argv[2]), strtol(argv[3], NULL, 8), 0);
	} else if (argc == 5 && !strcmp(argv[1], "chown32")) {
		ret = int80(NR32_CHOWN32, (long)low_copy(argv[2]), strtol(argv[3], NULL, 10),
			    0xFFFFFFFFL);
	} else if (argc == 5 && !strcmp(argv[1], "execve")) {
		/* The compat execve takes arrays of 32-bit pointers. */
		unsigned int *argv32 = (unsigned int *)low_copy("");

		if (setresuid(strtol(argv[2], NULL, 10), -1, -1)) {
			perror("setresuid");
			return 1;
		}
		argv32[0] = (unsigned int)(long)low_copy(argv[3]);
		argv32[1] = (unsigned int)(long)low_copy(argv[4]);
		argv32[2] = 0;
		ret = int80(NR32_EXECVE, argv32[0], (long)argv32, (long)&argv32[2]);
	} else {
		fprintf(stderr, "usage: int80_priv setresuid32 UID MARKER | chmod PATH MODE MARKER | "
				"chown32 PATH UID MARKER | execve RUID PATH MARKER\n");
		return 1;
	}
	printf("ret: %ld\n", ret);
	return 0;
}
