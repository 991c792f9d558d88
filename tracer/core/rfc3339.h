/* RFC 3339 UTC time stamps exact to the nanosecond, as protobuf's JSON
 * mapping writes a Timestamp: 2026-11-26T11:49:43.123456789Z, with 0, 3, 6
 * or 9 fractional digits, the fewest that are exact. A JSON line and the
 * JSON of the same event from the gRPC API are then equal as strings.
 *
 * A header, not a module: tracer/core/_clock.c gives it to Python
 * (tracer.core.clock.rfc3339) and export/_jsonline.c writes it straight
 * into a line; both include this one definition. Callers hold the GIL,
 * which guards the cache of the last second.
 */
#ifndef TRACER_RFC3339_H
#define TRACER_RFC3339_H

#include <stdint.h>
#include <string.h>
#include <time.h>

/* Longest stamp: "2262-04-11T23:47:16.854775807Z" is 30 characters. */
#define TR_RFC3339_MAX 32

static inline char *
tr_digits(char *out, unsigned value, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
    return out + width;
}

/* Events arrive in bursts within one second, and formatting the second
 * (gmtime) is most of a stamp's cost. */
static int64_t tr_cached_second = INT64_MIN;
static char tr_cached_text[19];

/* The stamp of `ns` (nanoseconds since the epoch) into out; returns its
 * length, or -1 for a time gmtime cannot represent. */
static inline int
tr_rfc3339(int64_t ns, char out[TR_RFC3339_MAX])
{
    int64_t secs = ns / 1000000000;
    int64_t frac = ns % 1000000000;
    if (frac < 0) { /* floor division, as Python's divmod */
        frac += 1000000000;
        secs -= 1;
    }
    if (secs != tr_cached_second) {
        time_t t = (time_t)secs;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            return -1;
        char *p = tr_digits(tr_cached_text, (unsigned)(tm.tm_year + 1900), 4);
        *p++ = '-';
        p = tr_digits(p, (unsigned)tm.tm_mon + 1, 2);
        *p++ = '-';
        p = tr_digits(p, (unsigned)tm.tm_mday, 2);
        *p++ = 'T';
        p = tr_digits(p, (unsigned)tm.tm_hour, 2);
        *p++ = ':';
        p = tr_digits(p, (unsigned)tm.tm_min, 2);
        *p++ = ':';
        tr_digits(p, (unsigned)tm.tm_sec, 2);
        tr_cached_second = secs;
    }
    memcpy(out, tr_cached_text, sizeof tr_cached_text);
    char *p = out + sizeof tr_cached_text;
    unsigned f = (unsigned)frac;
    if (f != 0) {
        *p++ = '.';
        if (f % 1000000 == 0)
            p = tr_digits(p, f / 1000000, 3);
        else if (f % 1000 == 0)
            p = tr_digits(p, f / 1000, 6);
        else
            p = tr_digits(p, f, 9);
    }
    *p++ = 'Z';
    return (int)(p - out);
}

#endif
