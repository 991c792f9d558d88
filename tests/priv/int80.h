/* A syscall through the 32-bit entry (`int $0x80`) from a 64-bit program:
 * number in eax, arguments in ebx, ecx, edx. Shared by int80_priv.c and
 * bench/int80_setid.c. */
#ifndef TRACER_TEST_INT80_H
#define TRACER_TEST_INT80_H

static long int80(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("int $0x80"
		     : "=a"(ret)
		     : "a"(nr), "b"(a), "c"(b), "d"(c)
		     : "memory", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
	return ret;
}

#endif
