/*
 * connprobe: the two connection tools scripts/bench.sh needs and wrk does not provide.
 *
 *   connprobe lat  ADDR PORT N [WARMUP]
 *       N sequential blocking connect()s (after WARMUP unrecorded ones), each timed from the
 *       call (the SYN leaves) to its return (the SYN-ACK came back and the ACK was sent: the
 *       socket is ESTABLISHED), then closed abortively (SO_LINGER 0: a RST, so the client keeps
 *       no TIME_WAIT and nginx never sees a request). Prints one line:
 *         n=N errors=E p50_us=.. p90_us=.. p99_us=.. mean_us=.. min_us=.. max_us=..
 *
 *   connprobe req  ADDR PORT N [WARMUP]
 *       The same, but each connection also sends an HTTP/1.1 GET with "Connection: close"
 *       and reads the answer to EOF (the server closes first); the time is from connect() to
 *       EOF: what a client waits for a whole short request, including, behind a proxy, the
 *       proxy's own connection to the real server. Same output line.
 *
 *   connprobe fill ADDR PORT TOTAL CONC SRC[,SRC...] [TIMEOUT_S]
 *       TOTAL HTTP/1.1 requests with "Connection: close", CONC in flight, each on a new
 *       connection from its own source address and port (the addresses in turn, ports from
 *       1024 up), so up to 64512 distinct tuples per address: the director's conntrack table
 *       then holds one entry per connection, in TIME_WAIT for 120 s after the server closes.
 *       Reads each answer to EOF (the server closes first, so the client holds no TIME_WAIT).
 *       Prints: done=D errors=E secs=S rate=R unfinished=U
 *
 *   connprobe churn ADDR PORT SECS CONC SRC[,SRC...] [RATE]
 *       The fill's connections, but for SECS seconds instead of a count, and at most RATE new
 *       ones a second (0 or absent: as fast as CONC allows). The tuples go round the same
 *       sequence (after 64512 per address they come again), so at a RATE below
 *       64512 * addresses / 120 no tuple returns while the director still holds its TIME_WAIT
 *       entry: the conntrack table then settles at about RATE * 120 entries, a constant
 *       population that keeps being replaced. Then waits up to 10 s for the connections in
 *       flight. Prints a progress line every second (flushed, for a sampler reading the
 *       output while it runs): t=S done=D errors=E inflight=I, and at the end the fill's line.
 *
 * Exit status: 0 when every connection succeeded, 1 when some failed, 2 on bad usage or a
 * local error. Built by scripts/bench.sh with `gcc -O2`; Linux only (epoll).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_addr(const char *s, struct in_addr *a)
{
    if (inet_pton(AF_INET, s, a) != 1) {
        fprintf(stderr, "connprobe: '%s' is not an IPv4 address\n", s);
        return -1;
    }
    return 0;
}

static long parse_num(const char *s, long min, long max, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max) {
        fprintf(stderr, "connprobe: bad %s '%s' (expected %ld..%ld)\n", what, s, min, max);
        exit(2);
    }
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double pct(const double *v, size_t n, double p)
{
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/* Sends REQUEST on a connected blocking socket and reads to EOF; 0 on success, else -1 with
 * *what naming the failed step. */
static int request(int fd, const char **what)
{
    char buf[4096];
    size_t total = 0;
    if (send(fd, REQUEST, sizeof REQUEST - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof REQUEST - 1)) {
        *what = "send";
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r == 0) {
            if (total > 0)
                return 0;
            *what = "read (EOF before any answer)";
            errno = 0;
            return -1;
        }
        if (r > 0)
            total += (size_t)r;
        else if (errno != EINTR) {
            *what = "read";
            return -1;
        }
    }
}

/* The local address of fd, for error messages. */
static void local_addr(int fd, char *out, size_t len)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    char ip[INET_ADDRSTRLEN] = "?";
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(out, len, "%s:%u", ip, sl == sizeof sa ? ntohs(sa.sin_port) : 0);
}

/* with_request: time connect() + request() instead of connect() alone. */
static int run_lat(struct sockaddr_in *dst, long n, long warmup, int with_request)
{
    double *us = calloc((size_t)n, sizeof *us);
    if (!us) {
        perror("connprobe: calloc");
        return 2;
    }
    size_t got = 0;
    long errors = 0;
    /* A dropped SYN is retried by the kernel after 1 s, 3 s, ...: such a connect still
     * counts (it is what a client sees); only one that fails within 5 s is an error. */
    struct timeval tmo = { .tv_sec = 5, .tv_usec = 0 };
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    for (long i = 0; i < n + warmup; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            perror("connprobe: socket");
            free(us);
            return 2;
        }
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof tmo);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo);
        const char *what = "connect";
        double t0 = now_s();
        int r = connect(fd, (struct sockaddr *)dst, sizeof *dst);
        if (r == 0 && with_request)
            r = request(fd, &what);
        double t1 = now_s();
        if (r == 0) {
            if (i >= warmup)
                us[got++] = (t1 - t0) * 1e6;
        } else {
            /* Each failure on stderr, with the client's port: enough to find it in a capture
             * or a conntrack listing. */
            char from[64];
            int e = errno;
            local_addr(fd, from, sizeof from);
            fprintf(stderr, "connprobe: #%ld from %s: %s failed after %.0f us: %s\n", i, from, what,
                    (t1 - t0) * 1e6, e ? strerror(e) : "no data");
            if (i >= warmup)
                errors++;
        }
        /* After a whole request the server has closed first: a plain close leaves no
         * TIME_WAIT here. A bare connect (or a failed one) is cut with a RST for the same
         * reason. */
        if (!with_request || r != 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    if (got == 0) {
        printf("n=0 errors=%ld\n", errors);
        free(us);
        return 1;
    }
    qsort(us, got, sizeof *us, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < got; i++)
        sum += us[i];
    printf("n=%zu errors=%ld p50_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f min_us=%.1f max_us=%.1f\n",
           got, errors, pct(us, got, 50), pct(us, got, 90), pct(us, got, 99), sum / (double)got, us[0],
           us[got - 1]);
    free(us);
    return errors ? 1 : 0;
}

enum slot_state { IDLE, CONNECTING, READING };

struct slot {
    int fd;
    enum slot_state st;
};

/* Starts connection number k in slot s; returns 0, or -1 (counted as an error). Connection k
 * comes from source k % nsrc and port 1024 + (k / nsrc) % 64512, so the first 64512 * nsrc
 * connections are distinct tuples: letting connect() choose the port would pick one at random
 * (net/ipv4/inet_hashtables.c, __inet_hash_connect's table_perturb), and reuse tuples whose
 * director entry is still in TIME_WAIT long before the range is used up. */
static int start_conn(int ep, struct slot *s, long slot_idx, struct sockaddr_in *dst, const struct in_addr *srcs,
                      size_t nsrc, long k)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    /* The client holds no TIME_WAIT (the server closes first), but a port may still be in it
     * from an earlier run. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {
        .sin_family = AF_INET,
        .sin_addr = srcs[(size_t)k % nsrc],
        .sin_port = htons((uint16_t)(1024 + (k / (long)nsrc) % 64512)),
    };
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        (connect(fd, (struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = (uint64_t)slot_idx };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    s->st = CONNECTING;
    return 0;
}

/* The fill and the churn: connections start while started < total and the clock is below
 * start_until (seconds from the start), at most rate a second (0: no limit); the run ends when
 * none is in flight after that, or at timeout. progress: a line on stdout every second. */
static int run_load(struct sockaddr_in *dst, long total, double start_until, long conc, struct in_addr *srcs,
                    size_t nsrc, double timeout, double rate, int progress)
{
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!slots || ep < 0) {
        perror("connprobe: setup");
        return 2;
    }
    long started = 0, done = 0, errors = 0, inflight = 0;
    double t0 = now_s(), next_report = 1.0;
    char buf[4096];

    for (long i = 0; i < conc; i++)
        slots[i].st = IDLE;
    for (;;) {
        double el = now_s() - t0;
        int starting = started < total && el < start_until;
        /* Keep every idle slot busy while there is work left (and the rate allows it). */
        long allowed = rate > 0 ? (long)(rate * el) + 1 : total;
        for (long i = 0; i < conc && starting && started < total && started < allowed; i++) {
            if (slots[i].st != IDLE)
                continue;
            if (start_conn(ep, &slots[i], i, dst, srcs, nsrc, started) < 0) {
                if (++errors <= 10)
                    fprintf(stderr, "connprobe: connection #%ld could not start: %s\n", started, strerror(errno));
            } else {
                inflight++;
            }
            started++;
        }
        if (progress && el >= next_report) {
            printf("t=%.1f done=%ld errors=%ld inflight=%ld\n", el, done, errors, inflight);
            fflush(stdout);
            while (next_report <= el)
                next_report += 1.0;
        }
        if (inflight == 0 && !starting)
            break;
        if (el > timeout) {
            fprintf(stderr, "connprobe: stopped after %.0f s with %ld connections in flight\n", timeout, inflight);
            break;
        }
        /* Wake up for the next start the rate allows (epoll_wait counts whole ms), and for the
         * next progress line. */
        int wait_ms = 200;
        if (starting && inflight < conc && rate > 0) {
            double due = ((double)(started + 1) / rate - el) * 1000.0;
            wait_ms = due < 1.0 ? 1 : due > 200.0 ? 200 : (int)due + 1;
        }
        if (progress) {
            double rep = (next_report - el) * 1000.0;
            if (rep < wait_ms)
                wait_ms = rep < 1.0 ? 1 : (int)rep + 1;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, wait_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("connprobe: epoll_wait");
            return 2;
        }
        for (int k = 0; k < n; k++) {
            struct slot *s = &slots[evs[k].data.u64];
            int finished = 0, failed = 0;
            const char *what = "";
            int err = 0;
            if (s->st == CONNECTING) {
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    failed = 1;
                    what = "connect";
                } else if (send(s->fd, REQUEST, sizeof REQUEST - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof REQUEST - 1)) {
                    failed = 1;
                    what = "send";
                    err = errno;
                } else {
                    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = evs[k].data.u64 };
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    s->st = READING;
                }
            } else if (s->st == READING) {
                for (;;) {
                    ssize_t r = read(s->fd, buf, sizeof buf);
                    if (r > 0)
                        continue;
                    if (r == 0) {
                        finished = 1;
                    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        failed = 1;
                        what = "read";
                        err = errno;
                    }
                    break;
                }
            }
            if (failed && errors < 10) {
                /* The first few failures, with the client's address: enough to find them in a
                 * capture or a conntrack listing. */
                char from[64];
                local_addr(s->fd, from, sizeof from);
                fprintf(stderr, "connprobe: from %s: %s failed: %s\n", from, what, strerror(err));
            }
            if (finished || failed) {
                close(s->fd); /* closing removes it from the epoll set */
                s->st = IDLE;
                inflight--;
                if (failed)
                    errors++;
                else
                    done++;
            }
        }
    }
    double secs = now_s() - t0;
    printf("done=%ld errors=%ld secs=%.2f rate=%.0f unfinished=%ld\n", done, errors, secs,
           secs > 0 ? (double)done / secs : 0.0, inflight);
    for (long i = 0; i < conc; i++)
        if (slots[i].st != IDLE)
            close(slots[i].fd);
    free(slots);
    close(ep);
    return errors || inflight || done < (total == LONG_MAX ? 1 : total) ? 1 : 0;
}

/* SRC[,SRC...] -> srcs; returns how many, or -1. */
static int parse_srcs(const char *arg, struct in_addr *srcs, size_t max)
{
    size_t nsrc = 0;
    char *list = strdup(arg);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        if (nsrc == max || parse_addr(tok, &srcs[nsrc]) < 0) {
            free(list);
            return -1;
        }
        nsrc++;
    }
    free(list);
    return (int)nsrc;
}

static void usage(void)
{
    fprintf(stderr, "usage: connprobe lat|req ADDR PORT N [WARMUP]\n"
                    "       connprobe fill ADDR PORT TOTAL CONC SRC[,SRC...] [TIMEOUT_S]\n"
                    "       connprobe churn ADDR PORT SECS CONC SRC[,SRC...] [RATE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        usage();
    struct sockaddr_in dst = { .sin_family = AF_INET };
    if (parse_addr(argv[2], &dst.sin_addr) < 0)
        return 2;
    dst.sin_port = htons((uint16_t)parse_num(argv[3], 1, 65535, "port"));
    if (strcmp(argv[1], "lat") == 0 || strcmp(argv[1], "req") == 0) {
        if (argc > 6)
            usage();
        long n = parse_num(argv[4], 1, 10000000, "count");
        long warmup = argc == 6 ? parse_num(argv[5], 0, 1000000, "warmup") : 0;
        return run_lat(&dst, n, warmup, strcmp(argv[1], "req") == 0);
    }
    if (strcmp(argv[1], "fill") == 0 || strcmp(argv[1], "churn") == 0) {
        int churn = strcmp(argv[1], "churn") == 0;
        if (argc < 7 || argc > 8)
            usage();
        struct in_addr srcs[64];
        int nsrc = parse_srcs(argv[6], srcs, sizeof srcs / sizeof srcs[0]);
        if (nsrc < 0)
            return 2;
        if (nsrc == 0)
            usage();
        long conc = parse_num(argv[5], 1, 100000, "concurrency");
        if (churn) {
            double secs = (double)parse_num(argv[4], 1, 86400, "seconds");
            double rate = argc == 8 ? (double)parse_num(argv[7], 0, 10000000, "rate") : 0.0;
            return run_load(&dst, LONG_MAX, secs, conc, srcs, (size_t)nsrc, secs + 10.0, rate, 1);
        }
        long total = parse_num(argv[4], 1, 100000000, "total");
        double timeout = argc == 8 ? (double)parse_num(argv[7], 1, 86400, "timeout") : 600.0;
        return run_load(&dst, total, 1e300, conc, srcs, (size_t)nsrc, timeout, 0.0, 0);
    }
    usage();
    return 2;
}
