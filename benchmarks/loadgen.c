/*
 * mq9fast benchmark load generator.
 *
 * One program, one scenario per invocation (first argument), one JSON object
 * of results on stdout.  Written against the NATS C client (libnats 3.4,
 * Debian package libnats-dev) so that the same generator drives both
 * mq9fast and the real nats-server / JetStream.
 *
 *   loadgen pubsub      --url U --size 128 --count N --seconds S
 *   loadgen reqrep      --url U --inflight K --seconds S --size 128
 *   loadgen mq9send     --url U --inflight K --seconds S --size 128 --mailbox A
 *   loadgen jspub       --url U --inflight K --seconds S --size 128 --stream NAME
 *   loadgen mq9fetch    --url U --count N --batch 100
 *   loadgen jsfetch     --url U --count N --batch 100
 *   loadgen ping        --url U --subject S [--body B] --count N
 *   loadgen register    --url U --count N [--start I] [--inflight K]
 *   loadgen discover    --url U --mode text|semantic --count N [--inflight 1]
 *   loadgen connections --url U --count N --src-prefix 127.0.0. [--seconds S] [--procs P]
 *   loadgen card I | query I text|semantic    (print a generated card / query)
 *
 * Many connections (raw engine; see "many connections" below and README):
 *   loadgen pubsub  --conns N [--subs S] [--route shared|split|local]
 *   loadgen reqrep  --conns N --inflight K [--responders R] [--route shared|local]
 *   loadgen mq9send --conns N --inflight K [--mailboxes M] --mailbox PREFIX
 *   loadgen jspub   --conns N --inflight K [--mailboxes M] --stream NAME
 * Connections are spread over mq9fast --workers N by the kernel (plain
 * connect, SO_REUSEPORT); each INFO's worker_id is recorded, and the output
 * says how many connections each worker got and which share of the traffic
 * crossed between workers (cross_frac).
 *
 * Common options: --warmup SEC (excluded from the measurement window),
 * --broker-pid PID (the generator samples the broker's CPU time from
 * /proc/PID/stat at the exact window boundaries, so the caller can tell a
 * broker-bound figure from a generator-bound one; it also reports its own
 * CPU and what every other process on the host used: gen_cpu, broker_cpu,
 * other_cpu, in cores), --timeout SEC.
 *
 * Engines (--engine): "libnats" (default) drives the load through the NATS C
 * client; "raw" uses a small single-threaded client written here that
 * batches reads and writes, for the pipelined scenarios (pubsub, reqrep,
 * mq9send, jspub, register, discover) where libnats itself saturates a core
 * before nats-server does.  Setup (mailbox/stream creation), the fetch
 * scenarios and JetStream consumers always use libnats.  --asap 0|1 sets
 * libnats SendAsap on request/reply connections (default 1: without it
 * libnats delays each flush by about a millisecond).
 *
 * Every load loop is bounded by both a count and a time limit.
 *
 * Build: cc -O2 -Wall -o loadgen loadgen.c -lnats -lpthread -lm
 */
#define _GNU_SOURCE
#include <nats/nats.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ------------------------------------------------------------------ */
/* small utilities                                                     */
/* ------------------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static const char *g_scenario = "?";

/* JSON output buffer */
static char g_out[1 << 16];
static size_t g_outlen;
static bool g_first = true;

static void out_raw(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_out + g_outlen, sizeof(g_out) - g_outlen, fmt, ap);
    va_end(ap);
    if (n > 0) {
        g_outlen += (size_t)n;
        if (g_outlen >= sizeof(g_out))
            g_outlen = sizeof(g_out) - 1;
    }
}

static void out_key(const char *k)
{
    out_raw("%s\"%s\":", g_first ? "{" : ",", k);
    g_first = false;
}

static void out_str(const char *k, const char *v)
{
    out_key(k);
    out_raw("\"");
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            out_raw("\\%c", *p);
        else if (*p < 0x20)
            out_raw("\\u%04x", *p);
        else
            out_raw("%c", *p);
    }
    out_raw("\"");
}

static void out_int(const char *k, long long v) { out_key(k); out_raw("%lld", v); }
static void out_num(const char *k, double v)
{
    out_key(k);
    if (isfinite(v))
        out_raw("%.6g", v);
    else
        out_raw("null");
}
static void out_bool(const char *k, bool v) { out_key(k); out_raw(v ? "true" : "false"); }

static void out_finish(void)
{
    if (g_first)
        out_raw("{");
    out_raw("}\n");
    fwrite(g_out, 1, g_outlen, stdout);
    fflush(stdout);
}

static void die(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    g_outlen = 0;
    g_first = true;
    out_str("scenario", g_scenario);
    out_bool("ok", false);
    out_str("error", msg);
    out_finish();
    fprintf(stderr, "loadgen %s: %s\n", g_scenario, msg);
    exit(2);
}

static void check_nats(natsStatus s, const char *what)
{
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        die("%s: %s (%s)", what, natsStatus_GetText(s), last ? last : "");
    }
}

/* ------------------------------------------------------------------ */
/* options                                                             */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *url;
    int size;
    long count;
    double seconds;
    double warmup;
    double timeout;
    int inflight;
    const char *mailbox;
    const char *stream;
    int batch;
    const char *mode;
    const char *src_prefix;
    int broker_pid;
    long start;
    long window;
    long flush_every;
    int asap;
    int parallel;
    const char *ack;
    int limit;
    const char *engine;
    int conns;          /* publisher / requester / sender connections (many-connection mode) */
    int subs;           /* pubsub: subscriber connections */
    int responders;     /* reqrep: responder connections (one queue group) */
    const char *route;  /* shared | split | local (see run_pubsub_multi / run_reqrep_multi) */
    int mailboxes;      /* mq9send/jspub with --conns: distinct mailboxes (0 = one per connection) */
    int procs;          /* connections: processes holding the idle connections (RLIMIT_NOFILE each) */
    const char *subject; /* ping: the request subject */
    const char *body;    /* ping: the request body */
} opts_t;

static opts_t O = {
    .url = "nats://127.0.0.1:4222",
    .size = 128,
    .count = 0,
    .seconds = 5.0,
    .warmup = 0.5,
    .timeout = 120.0,
    .inflight = 1,
    .mailbox = NULL,
    .stream = "BENCH",
    .batch = 100,
    .mode = "text",
    .src_prefix = "127.0.0.",
    .broker_pid = 0,
    .start = 0,
    .window = 50000,
    .flush_every = 20000,
    .asap = 1,
    .parallel = 256,
    .ack = "sync",
    .limit = 10,
    .engine = "libnats",
    .conns = 1,
    .subs = 1,
    .responders = 1,
    .route = "shared",
    .mailboxes = 0,
    .procs = 1,
    .subject = NULL,
    .body = "",
};

static void parse_opts(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (strncmp(k, "--", 2) != 0 || i + 1 >= argc)
            die("bad argument '%s' (options are --name value)", k);
        const char *v = argv[++i];
        k += 2;
        if (!strcmp(k, "url")) O.url = v;
        else if (!strcmp(k, "size")) O.size = atoi(v);
        else if (!strcmp(k, "count")) O.count = atol(v);
        else if (!strcmp(k, "seconds")) O.seconds = atof(v);
        else if (!strcmp(k, "warmup")) O.warmup = atof(v);
        else if (!strcmp(k, "timeout")) O.timeout = atof(v);
        else if (!strcmp(k, "inflight")) O.inflight = atoi(v);
        else if (!strcmp(k, "mailbox")) O.mailbox = v;
        else if (!strcmp(k, "stream")) O.stream = v;
        else if (!strcmp(k, "batch")) O.batch = atoi(v);
        else if (!strcmp(k, "mode")) O.mode = v;
        else if (!strcmp(k, "src-prefix")) O.src_prefix = v;
        else if (!strcmp(k, "broker-pid")) O.broker_pid = atoi(v);
        else if (!strcmp(k, "start")) O.start = atol(v);
        else if (!strcmp(k, "window")) O.window = atol(v);
        else if (!strcmp(k, "flush-every")) O.flush_every = atol(v);
        else if (!strcmp(k, "asap")) O.asap = atoi(v);
        else if (!strcmp(k, "parallel")) O.parallel = atoi(v);
        else if (!strcmp(k, "ack")) O.ack = v;
        else if (!strcmp(k, "limit")) O.limit = atoi(v);
        else if (!strcmp(k, "engine")) O.engine = v;
        else if (!strcmp(k, "conns")) O.conns = atoi(v);
        else if (!strcmp(k, "subs")) O.subs = atoi(v);
        else if (!strcmp(k, "responders")) O.responders = atoi(v);
        else if (!strcmp(k, "route")) O.route = v;
        else if (!strcmp(k, "mailboxes")) O.mailboxes = atoi(v);
        else if (!strcmp(k, "procs")) O.procs = atoi(v);
        else if (!strcmp(k, "subject")) O.subject = v;
        else if (!strcmp(k, "body")) O.body = v;
        else die("unknown option --%s", k);
    }
    if (O.size < 0 || O.size > 1000000) die("bad --size");
    if (O.inflight < 1 || O.inflight > 100000) die("bad --inflight");
    if (O.seconds <= 0 || O.seconds > 3600) die("bad --seconds");
    if (O.warmup < 0 || O.warmup > 60) die("bad --warmup");
    if (O.batch < 1 || O.batch > 10000) die("bad --batch");
    if (strcmp(O.engine, "libnats") && strcmp(O.engine, "raw")) die("--engine must be libnats or raw");
    if (O.conns < 1 || O.conns > 4096) die("bad --conns (1..4096)");
    if (O.subs < 1 || O.subs > 1024) die("bad --subs (1..1024)");
    if (O.responders < 1 || O.responders > 1024) die("bad --responders (1..1024)");
    if (O.mailboxes < 0 || O.mailboxes > 4096) die("bad --mailboxes");
    if (O.procs < 1 || O.procs > 64) die("bad --procs (1..64)");
    if (strcmp(O.route, "shared") && strcmp(O.route, "split") && strcmp(O.route, "local"))
        die("--route must be shared, split or local");
}

/* the many-connection code paths (raw engine only) */
static bool multi_mode(void)
{
    return O.conns > 1 || O.subs > 1 || O.responders > 1 || strcmp(O.route, "shared") != 0;
}

/* ------------------------------------------------------------------ */
/* CPU accounting: generator (getrusage) and broker (/proc/PID/stat)    */
/* ------------------------------------------------------------------ */

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime+stime of one process (all its threads); *ppid receives its parent */
static double proc_cpu_one(int pid, int *ppid);

/* the broker's direct children and their CPU (mq9fast --workers N) */
#define MAX_CHILDREN 16
typedef struct {
    int n;
    int pid[MAX_CHILDREN];
    double cpu[MAX_CHILDREN];
} children_t;

/* CPU of the broker process plus its direct children (mq9fast --workers N forks);
   each child's own figure goes to *ch when ch is not NULL */
static double proc_cpu_s_ch(int pid, children_t *ch)
{
    if (ch)
        ch->n = 0;
    if (pid <= 0)
        return NAN;
    int pp;
    double total = proc_cpu_one(pid, &pp);
    if (isnan(total))
        return NAN;
    DIR *d = opendir("/proc");
    if (!d)
        return total;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        int child = atoi(e->d_name);
        if (child == pid)
            continue;
        double c = proc_cpu_one(child, &pp);
        if (!isnan(c) && pp == pid) {
            total += c;
            if (ch && ch->n < MAX_CHILDREN) {
                ch->pid[ch->n] = child;
                ch->cpu[ch->n] = c;
                ch->n++;
            }
        }
    }
    closedir(d);
    return total;
}

static double proc_cpu_one(int pid, int *ppid)
{
    *ppid = 0;
    if (pid <= 0)
        return NAN;
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NAN;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return NAN;
    /* after ") " : field 3 is state, 4 ppid; utime is field 14, stime 15 */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    char *tok = p + 1;
    while (*tok && field < 15) {
        while (*tok == ' ')
            tok++;
        field++;
        if (field == 4)
            *ppid = atoi(tok);
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        if (field == 15)
            st = strtoull(tok, NULL, 10);
        while (*tok && *tok != ' ')
            tok++;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = atol(line + 6);
            break;
        }
    fclose(f);
    return kb;
}

/* resident memory of the broker: the process plus its direct children (mq9fast --workers N) */
static long broker_rss_kb(int pid)
{
    long kb = proc_rss_kb(pid);
    if (kb < 0)
        return kb;
    children_t ch;
    proc_cpu_s_ch(pid, &ch);
    for (int i = 0; i < ch.n; i++) {
        long c = proc_rss_kb(ch.pid[i]);
        if (c > 0)
            kb += c;
    }
    return kb;
}

/* CPU seconds used by the whole host (all cores, all processes) since boot */
static double host_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return NAN;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8)
        return NAN;
    /* user nice system [idle iowait] irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

typedef struct {
    int64_t t;
    double gen;
    double brk;
    double host;
    children_t ch; /* per-child CPU (workers) */
} mark_t;

static mark_t mark_now(void)
{
    mark_t m;
    memset(&m, 0, sizeof m);
    m.t = now_ns();
    m.gen = self_cpu_s();
    m.brk = proc_cpu_s_ch(O.broker_pid, &m.ch);
    m.host = host_busy_s();
    return m;
}

/* emits elapsed, gen_cpu, broker_cpu (fractions of one core) */
static void out_window(const mark_t *a, const mark_t *b)
{
    double el = (b->t - a->t) / 1e9;
    out_num("window_s", el);
    out_num("gen_cpu", el > 0 ? (b->gen - a->gen) / el : NAN);
    if (O.broker_pid > 0)
        out_num("broker_cpu", el > 0 ? (b->brk - a->brk) / el : NAN);
    /* everything else running on the host during the window (other processes, irqs) */
    double other = (b->host - a->host) - (b->gen - a->gen);
    if (O.broker_pid > 0)
        other -= (b->brk - a->brk);
    out_num("other_cpu", el > 0 ? other / el : NAN);
    /* --workers N: every worker's share (children of the broker pid, by pid: spawn order) */
    if (O.broker_pid > 0 && b->ch.n > 0 && el > 0) {
        int idx[MAX_CHILDREN];
        for (int i = 0; i < b->ch.n; i++)
            idx[i] = i;
        for (int i = 1; i < b->ch.n; i++)
            for (int j = i; j > 0 && b->ch.pid[idx[j]] < b->ch.pid[idx[j - 1]]; j--) {
                int t = idx[j];
                idx[j] = idx[j - 1];
                idx[j - 1] = t;
            }
        out_key("child_cpu");
        out_raw("[");
        for (int k = 0; k < b->ch.n; k++) {
            int i = idx[k];
            double before = NAN;
            for (int j = 0; j < a->ch.n; j++)
                if (a->ch.pid[j] == b->ch.pid[i])
                    before = a->ch.cpu[j];
            double v = isnan(before) ? NAN : (b->ch.cpu[i] - before) / el;
            if (isfinite(v))
                out_raw("%s%.3f", k ? "," : "", v);
            else
                out_raw("%snull", k ? "," : "");
        }
        out_raw("]");
    }
}

/* ------------------------------------------------------------------ */
/* latency samples                                                     */
/* ------------------------------------------------------------------ */

typedef struct {
    uint32_t *v; /* nanoseconds, clamped to 4.29 s */
    size_t n, cap;
} lat_t;

static void lat_add(lat_t *l, int64_t ns)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 65536;
        if (nc > 50000000)
            return; /* hard cap on samples: 200 MB */
        uint32_t *nv = realloc(l->v, nc * sizeof(uint32_t));
        if (!nv)
            return;
        l->v = nv;
        l->cap = nc;
    }
    if (ns < 0)
        ns = 0;
    if (ns > 0xFFFFFFFFLL)
        ns = 0xFFFFFFFFLL;
    l->v[l->n++] = (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void out_lat_p(lat_t *l, const char *px)
{
    char k[64];
#define LK(name) (snprintf(k, sizeof k, "%s%s", px, name), k)
    if (l->n == 0) {
        out_num(LK("p50_us"), NAN);
        out_num(LK("p99_us"), NAN);
        return;
    }
    qsort(l->v, l->n, sizeof(uint32_t), cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < l->n; i++)
        sum += l->v[i];
    out_num(LK("p50_us"), l->v[(size_t)(0.50 * (l->n - 1))] / 1e3);
    out_num(LK("p90_us"), l->v[(size_t)(0.90 * (l->n - 1))] / 1e3);
    out_num(LK("p99_us"), l->v[(size_t)(0.99 * (l->n - 1))] / 1e3);
    out_num(LK("max_us"), l->v[l->n - 1] / 1e3);
    out_num(LK("mean_us"), sum / l->n / 1e3);
    out_int(LK("samples"), (long long)l->n);
#undef LK
}

static void out_lat(lat_t *l) { out_lat_p(l, ""); }

/* ------------------------------------------------------------------ */
/* connections                                                         */
/* ------------------------------------------------------------------ */

static natsConnection *nats_connect(const char *name, bool asap)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    check_nats(natsOptions_Create(&o), "natsOptions_Create");
    natsOptions_SetURL(o, O.url);
    natsOptions_SetName(o, name);
    natsOptions_SetAllowReconnect(o, false);
    natsOptions_SetTimeout(o, 5000);
    natsOptions_SetMaxPendingMsgs(o, 10000000);
    natsOptions_SetIOBufSize(o, 256 * 1024);
    if (asap)
        natsOptions_SetSendAsap(o, true);
    natsStatus s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    check_nats(s, "connect");
    return nc;
}

static char g_payload[1 << 20];

static void make_payload(int size)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (int i = 0; i < size && i < (int)sizeof(g_payload); i++)
        g_payload[i] = al[(i * 7 + 3) % (sizeof(al) - 1)];
}

/* ------------------------------------------------------------------ */
/* reply scanning                                                      */
/* ------------------------------------------------------------------ */

/* returns 1 when the mq9 reply JSON has "error":"" (success) */
static int mq9_ok(const char *d, int n)
{
    return n > 0 && memmem(d, (size_t)n, "\"error\":\"\"", 10) != NULL;
}

/* copies a short excerpt of an error reply */
static void excerpt(char *dst, size_t cap, const char *d, int n)
{
    if (n <= 0) {
        snprintf(dst, cap, "(empty reply: no responders / 503?)");
        return;
    }
    size_t m = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
    memcpy(dst, d, m);
    dst[m] = 0;
    for (size_t i = 0; i < m; i++)
        if ((unsigned char)dst[i] < 0x20)
            dst[i] = ' ';
}

/* counts "msg_id": occurrences, stores the last value */
static long scan_msg_ids(const char *d, int n, long long *last)
{
    long cnt = 0;
    const char *p = d, *end = d + n;
    const char key[] = "\"msg_id\":";
    const size_t kl = sizeof(key) - 1;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), key, kl);
        if (!q)
            break;
        q += kl;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        bool neg = false;
        if (q < end && *q == '-') {
            neg = true;
            q++;
        }
        long long v = 0;
        bool any = false;
        while (q < end && *q >= '0' && *q <= '9') {
            v = v * 10 + (*q - '0');
            q++;
            any = true;
        }
        if (any) {
            cnt++;
            if (last)
                *last = neg ? -v : v;
        }
        p = q;
    }
    return cnt;
}

static long count_occ(const char *d, int n, const char *needle)
{
    long c = 0;
    size_t nl = strlen(needle);
    const char *p = d, *end = d + n;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), needle, nl);
        if (!q)
            break;
        c++;
        p = q + nl;
    }
    return c;
}

/* ------------------------------------------------------------------ */
/* generated agent cards and queries (own word lists)                  */
/* ------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct {
    const char *domain;
    const char *team;
    const char *objects[6];
} domain_t;

static const domain_t DOMAINS[] = {
    {"finance", "accounting", {"invoices", "expense reports", "payment reminders", "tax filings", "ledger entries", "payroll runs"}},
    {"healthcare", "clinical", {"patient records", "lab results", "insurance claims", "appointment requests", "discharge summaries", "prescription refills"}},
    {"logistics", "operations", {"shipment updates", "delivery routes", "warehouse inventory", "customs declarations", "freight quotes", "return labels"}},
    {"software", "engineering", {"pull requests", "bug reports", "unit tests", "deployment logs", "incident timelines", "API documentation"}},
    {"legal", "legal", {"contracts", "NDAs", "compliance checklists", "court filings", "privacy policies", "license agreements"}},
    {"marketing", "growth", {"ad copy", "social media posts", "newsletter drafts", "SEO keywords", "campaign reports", "product descriptions"}},
    {"customer support", "support", {"support tickets", "refund requests", "chat transcripts", "FAQ answers", "complaint emails", "satisfaction surveys"}},
    {"human resources", "people", {"resumes", "interview schedules", "onboarding packets", "leave requests", "performance reviews", "job postings"}},
    {"education", "teaching", {"lesson plans", "quiz answers", "essay drafts", "course syllabi", "reading lists", "student feedback"}},
    {"travel", "booking", {"flight itineraries", "hotel reservations", "visa applications", "travel expenses", "trip plans", "loyalty points"}},
    {"real estate", "brokerage", {"property listings", "lease agreements", "inspection reports", "mortgage documents", "rental applications", "valuation estimates"}},
    {"energy", "grid", {"meter readings", "outage reports", "load forecasts", "maintenance tickets", "emission reports", "sensor alerts"}},
    {"retail", "merchandising", {"product catalogs", "price lists", "purchase orders", "store inventories", "promotions", "customer reviews"}},
    {"security", "security", {"vulnerability reports", "access logs", "phishing emails", "firewall rules", "audit trails", "threat intelligence feeds"}},
    {"manufacturing", "plant", {"work orders", "quality inspections", "bill of materials", "machine telemetry", "supplier certificates", "production schedules"}},
    {"media", "editorial", {"news articles", "video transcripts", "podcast notes", "image captions", "press releases", "subtitles"}},
};

static const char *VERBS[] = {
    "summarizes", "translates", "classifies", "extracts key fields from", "drafts", "reviews",
    "validates", "schedules", "monitors", "forecasts trends in", "answers questions about",
    "audits", "routes", "tags", "deduplicates", "prioritizes", "anonymizes", "reconciles",
};
static const char *VERBS_BASE[] = {
    "summarize", "translate", "classify", "extract key fields from", "draft", "review",
    "validate", "schedule", "monitor", "forecast trends in", "answer questions about",
    "audit", "route", "tag", "deduplicate", "prioritize", "anonymize", "reconcile",
};
static const char *LANGS[] = {"English", "Chinese", "Spanish", "German", "French",
                              "Japanese", "Portuguese", "Arabic", "Korean", "Italian"};
static const char *FORMATS[] = {"PDF files", "CSV exports", "JSON documents", "spreadsheets",
                                "email threads", "scanned images", "web forms", "voice notes"};
static const char *TOOLS[] = {"Slack", "Salesforce", "SAP", "Jira", "GitHub", "Postgres", "S3",
                              "Stripe", "Shopify", "Zendesk", "Notion", "Google Sheets"};
static const char *QUALITIES[] = {
    "with low latency", "in nightly batches", "with a human approval step", "under strict privacy rules",
    "around the clock", "with detailed audit logs", "at high volume", "with confidence scores",
};
static const char *QTEMPL[] = {
    "find an agent that can %s %s for the %s team",
    "who can help me %s %s in %s",
    "I need something to %s our %s and send the results to %s",
    "looking for a %s assistant that will %s %s",
    "automatically %s incoming %s",
};

/* writes a compact REGISTER card for agent i; returns its length */
static int make_card(long i, char *buf, int cap)
{
    uint64_t h = mix64((uint64_t)i);
    const domain_t *d = &DOMAINS[h % NELEM(DOMAINS)];
    h = mix64(h);
    const char *o1 = d->objects[h % 6];
    const char *o2 = d->objects[(h >> 8) % 6];
    if (o2 == o1)
        o2 = d->objects[((h >> 8) + 1) % 6];
    const char *v1 = VERBS[(h >> 16) % NELEM(VERBS)];
    const char *v2 = VERBS[(h >> 24) % NELEM(VERBS)];
    if (v2 == v1)
        v2 = VERBS[((h >> 24) + 1) % NELEM(VERBS)];
    const char *l1 = LANGS[(h >> 32) % NELEM(LANGS)];
    const char *l2 = LANGS[(h >> 36) % NELEM(LANGS)];
    const char *f = FORMATS[(h >> 40) % NELEM(FORMATS)];
    const char *t = TOOLS[(h >> 44) % NELEM(TOOLS)];
    const char *q = QUALITIES[(h >> 52) % NELEM(QUALITIES)];
    int n = snprintf(buf, (size_t)cap,
                     "{\"name\":\"agent-%ld\",\"mailbox\":\"agent.%ld\",\"payload\":"
                     "\"%c%s %s and %s %s for %s teams in %s. Reads %s, works in %s and %s, "
                     "integrates with %s. Runs %s.\"}",
                     i, i, v1[0] - 32, v1 + 1, o1, v2, o2, d->team, d->domain, f, l1,
                     l1 == l2 ? "English" : l2, t, q);
    return n < cap ? n : cap - 1;
}

static int make_query(long i, bool semantic, char *buf, int cap)
{
    uint64_t h = mix64((uint64_t)i ^ 0xABCDEF12345ULL);
    const domain_t *d = &DOMAINS[h % NELEM(DOMAINS)];
    h = mix64(h);
    const char *o = d->objects[h % 6];
    const char *v = VERBS_BASE[(h >> 8) % NELEM(VERBS_BASE)];
    const char *l = LANGS[(h >> 16) % NELEM(LANGS)];
    const char *t = TOOLS[(h >> 24) % NELEM(TOOLS)];
    char q[256];
    if (semantic) {
        int k = (int)((h >> 32) % NELEM(QTEMPL));
        switch (k) {
        case 0: snprintf(q, sizeof q, QTEMPL[0], v, o, d->team); break;
        case 1: snprintf(q, sizeof q, QTEMPL[1], v, o, l); break;
        case 2: snprintf(q, sizeof q, QTEMPL[2], v, o, t); break;
        case 3: snprintf(q, sizeof q, QTEMPL[3], d->domain, v, o); break;
        default: snprintf(q, sizeof q, QTEMPL[4], v, o); break;
        }
    } else {
        /* 1-3 keywords: an object phrase, then 0-2 qualifiers (domain, language, tool,
           verb or input format); about 400k combinations */
        int k = (int)((h >> 32) % 100); /* 5%: one keyword, 30%: two, 65%: three */
        int nq = k < 5 ? 0 : k < 35 ? 1 : 2;
        int len = snprintf(q, sizeof q, "%s", o);
        uint64_t g = mix64(h ^ 0x5151);
        for (int j = 0; j < nq && len < (int)sizeof q - 40; j++, g = mix64(g)) {
            const char *w;
            int pick = (int)(g % 64);
            if (pick < 16) w = DOMAINS[pick].domain;
            else if (pick < 26) w = LANGS[pick - 16];
            else if (pick < 38) w = TOOLS[pick - 26];
            else if (pick < 56) w = VERBS_BASE[pick - 38];
            else w = FORMATS[pick - 56];
            len += snprintf(q + len, sizeof q - (size_t)len, " %s", w);
        }
        (void)v; (void)l; (void)t;
    }
    int n = snprintf(buf, (size_t)cap, "{\"%s\":\"%s\",\"limit\":%d}",
                     semantic ? "semantic" : "text", q, O.limit);
    return n < cap ? n : cap - 1;
}

/* ------------------------------------------------------------------ */
/* "raw" engine: a minimal single-threaded NATS client (own code) used  */
/* with --engine raw for the high-rate core scenarios.  It batches       */
/* reads and writes (one syscall per batch, no per-message thread        */
/* hand-off), so it has far more headroom than libnats, whose SendAsap   */
/* mode costs one write per message and whose default mode delays        */
/* flushes by ~1 ms.  Both engines speak the same protocol to both        */
/* brokers; the table records which one produced a row.                  */
/* ------------------------------------------------------------------ */

typedef struct rconn rconn_t;
typedef void (*rmsg_cb)(void *ctx, rconn_t *c, const char *subj, size_t sl, const char *reply,
                        size_t rl, const char *data, int n);

struct rconn {
    int fd;
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    long msgs;
    long published; /* frames this connection published (many-connection scenarios) */
    int worker;     /* "worker_id" of the broker's INFO (mq9fast --workers N); -1: none */
    bool closed;
    char err[200];
};

static void rc_append(rconn_t *c, const void *p, size_t n)
{
    if (c->wlen + n > c->wcap) {
        if (c->woff > 0) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + n > c->wcap) {
            size_t nc = c->wcap ? c->wcap : 1 << 20;
            while (c->wlen + n > nc)
                nc *= 2;
            c->wbuf = realloc(c->wbuf, nc);
            if (!c->wbuf)
                die("out of memory");
            c->wcap = nc;
        }
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
}

static size_t rc_pending(rconn_t *c) { return c->wlen - c->woff; }

/* non-blocking write of what is pending; returns true if something was written */
static bool rc_flush(rconn_t *c)
{
    bool any = false;
    while (c->woff < c->wlen) {
        ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (n > 0) {
            c->woff += (size_t)n;
            any = true;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        c->closed = true;
        snprintf(c->err, sizeof c->err, "write: %s", strerror(errno));
        break;
    }
    if (c->woff == c->wlen)
        c->woff = c->wlen = 0;
    return any;
}

/* parses complete frames in rbuf, calling cb for MSG/HMSG; answers PING */
static void rc_parse(rconn_t *c, rmsg_cb cb, void *ctx)
{
    size_t pos = 0;
    while (pos < c->rlen) {
        char *line = c->rbuf + pos;
        size_t avail = c->rlen - pos;
        char *eol = memchr(line, '\n', avail);
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line) + 1; /* includes \n */
        size_t cl = ll >= 2 && eol[-1] == '\r' ? ll - 2 : ll - 1;
        if (cl >= 4 && (line[0] == 'M' || line[0] == 'm' || line[0] == 'H' || line[0] == 'h')) {
            bool hdr = line[0] == 'H' || line[0] == 'h';
            /* tokens: [H]MSG subj sid [reply] [hdr] total */
            const char *tok[6];
            size_t tl[6];
            int nt = 0;
            size_t i = 0;
            while (i < cl && nt < 6) {
                while (i < cl && (line[i] == ' ' || line[i] == '\t'))
                    i++;
                if (i >= cl)
                    break;
                tok[nt] = line + i;
                size_t st = i;
                while (i < cl && line[i] != ' ' && line[i] != '\t')
                    i++;
                tl[nt++] = i - st;
            }
            int need_min = hdr ? 5 : 4;
            if (nt < need_min) {
                snprintf(c->err, sizeof c->err, "bad frame: %.*s", (int)(cl < 100 ? cl : 100), line);
                c->closed = true;
                return;
            }
            long total = strtol(tok[nt - 1], NULL, 10);
            long hlen = hdr ? strtol(tok[nt - 2], NULL, 10) : 0;
            int nargs = nt - (hdr ? 2 : 1); /* MSG subj sid [reply] */
            if (avail < ll + (size_t)total + 2)
                break; /* payload incomplete */
            const char *reply = nargs == 4 ? tok[3] : NULL;
            size_t rl = nargs == 4 ? tl[3] : 0;
            const char *data = line + ll + hlen;
            c->msgs++;
            if (cb)
                cb(ctx, c, tok[1], tl[1], reply, rl, data, (int)(total - hlen));
            pos += ll + (size_t)total + 2;
            continue;
        }
        if (cl >= 5 && !strncmp(line, "INFO ", 5)) {
            /* which worker accepted us (mq9fast --workers N); nats-server has no worker_id */
            const char *w = memmem(line, cl, "\"worker_id\":", 12);
            if (w)
                c->worker = atoi(w + 12);
        } else if (cl >= 4 && !strncasecmp(line, "PING", 4))
            rc_append(c, "PONG\r\n", 6);
        else if (cl >= 4 && !strncmp(line, "-ERR", 4) && !c->err[0])
            snprintf(c->err, sizeof c->err, "%.*s", (int)(cl < 150 ? cl : 150), line);
        pos += ll;
    }
    if (pos > 0) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
}

/* one non-blocking read + parse; returns true if bytes arrived */
static bool rc_pump(rconn_t *c, rmsg_cb cb, void *ctx)
{
    if (c->closed)
        return false;
    if (c->rcap - c->rlen < 65536) {
        c->rcap *= 2;
        c->rbuf = realloc(c->rbuf, c->rcap);
        if (!c->rbuf)
            die("out of memory");
    }
    ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (n > 0) {
        c->rlen += (size_t)n;
        rc_parse(c, cb, ctx);
        return true;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        c->closed = true;
        if (!c->err[0])
            snprintf(c->err, sizeof c->err, "connection closed by broker");
    }
    return false;
}

/* sends PING and pumps until the PONG: everything before it was processed */
static void rc_sync(rconn_t *c, rmsg_cb cb, void *ctx)
{
    rc_append(c, "PING\r\n", 6);
    int64_t limit = now_ns() + 5000000000LL;
    /* a PONG is a control line; detect it by scanning raw data before parsing */
    while (now_ns() < limit && !c->closed) {
        rc_flush(c);
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        poll(&pf, 1, 50);
        if (c->rcap - c->rlen < 65536) {
            c->rcap *= 2;
            c->rbuf = realloc(c->rbuf, c->rcap);
        }
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n <= 0)
            continue;
        c->rlen += (size_t)n;
        char *pong = memmem(c->rbuf, c->rlen, "PONG\r\n", 6);
        rc_parse(c, cb, ctx);
        if (pong)
            return;
    }
    die("raw engine: no PONG from broker (%s)", c->err);
}

static rconn_t *rc_open(void)
{
    char host[128];
    int port;
    const char *p = strstr(O.url, "://");
    p = p ? p + 3 : O.url;
    const char *colon = strrchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof host)
        die("url needs host:port");
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = 0;
    port = atoi(colon + 1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("raw engine needs a numeric IPv4 host, got %s", host);
    rconn_t *c = calloc(1, sizeof *c);
    c->worker = -1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("raw connect %s: %s", O.url, strerror(errno));
    int one = 1, sz = 4 << 20;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->rcap = 4 << 20;
    c->rbuf = malloc(c->rcap);
    static const char hs[] = "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"c-raw\","
                             "\"version\":\"1\",\"protocol\":1,\"headers\":true,"
                             "\"no_responders\":true}\r\n";
    rc_append(c, hs, sizeof hs - 1);
    rc_sync(c, NULL, NULL);
    return c;
}

static void rc_close(rconn_t *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c->rbuf);
    free(c->wbuf);
    free(c);
}

/* waits until one of the connections is readable (or writable when output is pending) */
static void rc_wait(rconn_t **cs, int n, int timeout_ms)
{
    struct pollfd pf[4];
    int k = 0;
    for (int i = 0; i < n && k < 4; i++) {
        if (!cs[i] || cs[i]->closed)
            continue;
        pf[k].fd = cs[i]->fd;
        pf[k].events = POLLIN | (rc_pending(cs[i]) ? POLLOUT : 0);
        pf[k].revents = 0;
        k++;
    }
    if (k)
        poll(pf, (nfds_t)k, timeout_ms);
}

/* ------------------------------------------------------------------ */
/* generic pipelined requester: K requests in flight on one connection */
/* ------------------------------------------------------------------ */

enum { CHECK_ANY, CHECK_ECHO, CHECK_MQ9, CHECK_JSACK, CHECK_DISCOVER };
enum { BODY_FIXED, BODY_CARD, BODY_QUERY_TEXT, BODY_QUERY_SEM };

typedef struct {
    natsConnection *nc;
    rconn_t *raw; /* raw engine connection, or NULL for libnats */
    natsSubscription *sub;
    const char *subject;
    int inflight;
    char prefix[64];
    size_t prefix_len;
    char **reply_subj;
    char **frame;   /* raw engine, fixed body: the whole PUB frame of each slot, rendered once */
    size_t *frame_len;
    int64_t *sent_at;
    int check;
    int body;
    long body_base; /* card/query index offset */
    long max_requests;
    int64_t win_start, deadline;
    /* state, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long issued, replies, win_replies, errors, win_errors, outstanding;
    int64_t first_sent, last_reply;
    long long extra; /* e.g. total result entries for DISCOVER */
    lat_t lat;
    uint8_t *xflag;  /* many-connection reqrep: slot's request was answered on another worker */
    lat_t lat_x;     /* latencies of those requests (lat holds the others) */
    char first_error[300];
    mark_t m_start, m_end;
    bool m_start_set, m_end_set;
    natsStatus pub_err;
} req_t;

static int req_body(req_t *r, long seq, char *buf, int cap, const char **out)
{
    switch (r->body) {
    case BODY_CARD: *out = buf; return make_card(r->body_base + seq, buf, cap);
    case BODY_QUERY_TEXT: *out = buf; return make_query(r->body_base + seq, false, buf, cap);
    case BODY_QUERY_SEM: *out = buf; return make_query(r->body_base + seq, true, buf, cap);
    default: *out = g_payload; return O.size;
    }
}

/* must hold r->mu */
static void req_issue(req_t *r, int slot, int64_t now)
{
    char buf[1024];
    const char *body;
    long seq = r->issued++;
    int len = req_body(r, seq, buf, sizeof buf, &body);
    r->outstanding++;
    r->sent_at[slot] = now;
    if (r->first_sent == 0)
        r->first_sent = now;
    if (r->raw && r->frame) {
        rc_append(r->raw, r->frame[slot], r->frame_len[slot]);
        return;
    }
    if (r->raw) {
        char hdr[512];
        int hl = snprintf(hdr, sizeof hdr, "PUB %s %s %d\r\n", r->subject, r->reply_subj[slot], len);
        rc_append(r->raw, hdr, (size_t)hl);
        rc_append(r->raw, body, (size_t)len);
        rc_append(r->raw, "\r\n", 2);
        return;
    }
    natsStatus s = natsConnection_PublishRequest(r->nc, r->subject, r->reply_subj[slot], body, len);
    if (s != NATS_OK && r->pub_err == NATS_OK)
        r->pub_err = s;
}

/* one reply arrived (either engine) */
static void req_got_reply(req_t *r, const char *subj, size_t sl, const char *d, int n)
{
    int64_t now = now_ns();
    int slot = -1;
    if (sl > r->prefix_len && strncmp(subj, r->prefix, r->prefix_len) == 0) {
        slot = 0;
        for (size_t i = r->prefix_len; i < sl && subj[i] >= '0' && subj[i] <= '9'; i++)
            slot = slot * 10 + (subj[i] - '0');
    }
    bool ok;
    long long extra = 0;
    switch (r->check) {
    case CHECK_MQ9: ok = mq9_ok(d, n); break;
    case CHECK_ECHO: ok = n == O.size && memcmp(d, g_payload, (size_t)n) == 0; break;
    case CHECK_JSACK:
        ok = n > 0 && !memmem(d, (size_t)n, "\"error\"", 7) && memmem(d, (size_t)n, "\"seq\"", 5);
        break;
    case CHECK_DISCOVER:
        ok = mq9_ok(d, n);
        if (ok)
            extra = count_occ(d, n, "\"agent_info\":");
        break;
    default: ok = n > 0; break;
    }
    pthread_mutex_lock(&r->mu);
    if (slot < 0 || slot >= r->inflight) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    r->replies++;
    r->outstanding--;
    r->last_reply = now;
    r->extra += extra;
    if (!ok) {
        r->errors++;
        if (!r->first_error[0])
            excerpt(r->first_error, sizeof r->first_error, d, n);
    }
    if (now >= r->win_start && !r->m_start_set) {
        r->m_start = mark_now();
        r->m_start_set = true;
    }
    if (now >= r->win_start && now <= r->deadline) {
        r->win_replies++;
        if (!ok)
            r->win_errors++;
        lat_add(r->xflag && r->xflag[slot] ? &r->lat_x : &r->lat, now - r->sent_at[slot]);
    }
    if (now < r->deadline && r->issued < r->max_requests) {
        req_issue(r, slot, now);
    } else {
        /* time-bound: the window closed at the deadline; count-bound: at the last reply */
        if (!r->m_end_set && (now >= r->deadline || r->outstanding == 0)) {
            r->m_end = mark_now();
            r->m_end_set = true;
        }
        if (r->outstanding == 0)
            pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

static void req_on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    const char *subj = natsMsg_GetSubject(msg);
    req_got_reply(closure, subj, strlen(subj), natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

static void req_raw_cb(void *ctx, rconn_t *c, const char *subj, size_t sl, const char *reply,
                       size_t rl, const char *data, int n)
{
    (void)c;
    (void)reply;
    (void)rl;
    req_got_reply(ctx, subj, sl, data, n);
}

/* raw-engine responder: echo the request payload to its reply subject */
static void raw_responder_cb(void *ctx, rconn_t *c, const char *subj, size_t sl,
                             const char *reply, size_t rl, const char *data, int n)
{
    (void)ctx;
    (void)subj;
    (void)sl;
    if (!reply || rl > 200 || n < 0)
        return;
    /* "PUB <reply> <n>\r\n<data>\r\n", assembled by hand (this runs once per request) */
    char hdr[240], num[16];
    int nl = 0;
    unsigned v = (unsigned)n;
    do {
        num[nl++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t hl = 0;
    memcpy(hdr, "PUB ", 4);
    hl = 4;
    memcpy(hdr + hl, reply, rl);
    hl += rl;
    hdr[hl++] = ' ';
    while (nl)
        hdr[hl++] = num[--nl];
    hdr[hl++] = '\r';
    hdr[hl++] = '\n';
    rc_append(c, hdr, hl);
    rc_append(c, data, (size_t)n);
    rc_append(c, "\r\n", 2);
}

static int g_req_serial; /* numbers every requester's inbox */

static void req_init(req_t *r, natsConnection *nc, rconn_t *raw, const char *subject, int inflight,
                     int check, int body, long max_requests)
{
    memset(r, 0, sizeof *r);
    r->nc = nc;
    r->raw = raw;
    r->subject = subject;
    r->inflight = inflight;
    r->check = check;
    r->body = body;
    r->max_requests = max_requests > 0 ? max_requests : 2000000000L;
    snprintf(r->prefix, sizeof r->prefix, "_INBOX.lg%d_%d.", (int)getpid(), g_req_serial++);
    r->prefix_len = strlen(r->prefix);
    r->reply_subj = calloc((size_t)inflight, sizeof(char *));
    r->sent_at = calloc((size_t)inflight, sizeof(int64_t));
    for (int i = 0; i < inflight; i++) {
        char s[96];
        snprintf(s, sizeof s, "%s%d", r->prefix, i);
        r->reply_subj[i] = strdup(s);
    }
    if (raw && body == BODY_FIXED) {
        r->frame = calloc((size_t)inflight, sizeof(char *));
        r->frame_len = calloc((size_t)inflight, sizeof(size_t));
        for (int i = 0; i < inflight; i++) {
            char hdr[512];
            int hl = snprintf(hdr, sizeof hdr, "PUB %s %s %d\r\n", subject, r->reply_subj[i], O.size);
            r->frame_len[i] = (size_t)hl + (size_t)O.size + 2;
            r->frame[i] = malloc(r->frame_len[i]);
            memcpy(r->frame[i], hdr, (size_t)hl);
            memcpy(r->frame[i] + hl, g_payload, (size_t)O.size);
            memcpy(r->frame[i] + hl + O.size, "\r\n", 2);
        }
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    char wild[80];
    snprintf(wild, sizeof wild, "%s*", r->prefix);
    if (raw) {
        char line[128];
        int ll = snprintf(line, sizeof line, "SUB %s 1\r\n", wild);
        rc_append(raw, line, (size_t)ll);
        rc_sync(raw, NULL, NULL);
        return;
    }
    check_nats(natsConnection_Subscribe(&r->sub, nc, wild, req_on_reply, r), "subscribe inbox");
    natsSubscription_SetPendingLimits(r->sub, -1, -1);
    check_nats(natsConnection_FlushTimeout(nc, 5000), "flush after subscribe");
}

/* Runs the requester: warmup, then a window of `seconds` (or until max_requests replies),
 * then waits for the outstanding replies. */
static void req_run_ex(req_t *r, rconn_t *responder, double warmup, double seconds);

static void req_run(req_t *r, double warmup, double seconds)
{
    if (r->raw) {
        req_run_ex(r, NULL, warmup, seconds);
        return;
    }
    int64_t t0 = now_ns();
    r->win_start = t0 + (int64_t)(warmup * 1e9);
    r->deadline = r->win_start + (int64_t)(seconds * 1e9);
    if (warmup <= 0) {
        r->m_start = mark_now();
        r->m_start_set = true;
    }
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->inflight && r->issued < r->max_requests; i++)
        req_issue(r, i, now_ns());
    pthread_mutex_unlock(&r->mu);
    if (!O.asap)
        natsConnection_Flush(r->nc);
    /* wait for completion: all replies back after the deadline / count */
    int64_t hard = r->deadline + 10LL * 1000000000LL;
    pthread_mutex_lock(&r->mu);
    while (!(r->outstanding == 0 && (r->issued >= r->max_requests || now_ns() >= r->deadline))) {
        if (now_ns() >= hard)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    if (!r->m_end_set) {
        r->m_end = mark_now();
        r->m_end_set = true;
    }
    if (!r->m_start_set)
        r->m_start = r->m_end;
    pthread_mutex_unlock(&r->mu);
}


/* raw engine: single thread pumps the requester (and an optional responder) connection */
static void req_run_ex(req_t *r, rconn_t *responder, double warmup, double seconds)
{
    int64_t t0 = now_ns();
    r->win_start = t0 + (int64_t)(warmup * 1e9);
    r->deadline = r->win_start + (int64_t)(seconds * 1e9);
    if (warmup <= 0) {
        r->m_start = mark_now();
        r->m_start_set = true;
    }
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->inflight && r->issued < r->max_requests; i++)
        req_issue(r, i, now_ns());
    pthread_mutex_unlock(&r->mu);
    int64_t hard = r->deadline + 10LL * 1000000000LL;
    rconn_t *cs[2] = {r->raw, responder};
    for (;;) {
        bool progress = rc_flush(r->raw);
        if (responder) {
            progress |= rc_pump(responder, raw_responder_cb, NULL);
            progress |= rc_flush(responder);
        }
        progress |= rc_pump(r->raw, req_raw_cb, r);
        progress |= rc_flush(r->raw);
        int64_t now = now_ns();
        if (r->outstanding == 0 && (r->issued >= r->max_requests || now >= r->deadline))
            break;
        if (now >= hard || r->raw->closed || (responder && responder->closed))
            break;
        if (!progress)
            rc_wait(cs, responder ? 2 : 1, 20);
    }
    if (!r->m_end_set) {
        r->m_end = mark_now();
        r->m_end_set = true;
    }
    if (!r->m_start_set)
        r->m_start = r->m_end;
    if (r->raw->err[0] && !r->first_error[0])
        snprintf(r->first_error, sizeof r->first_error, "%s", r->raw->err);
}

/* emits the requester's figures; rate is replies in the window / window time */
static void req_report(req_t *r, const char *rate_key)
{
    pthread_mutex_lock(&r->mu);
    mark_t a = r->m_start, b = r->m_end;
    /* a time-bound run ends at the deadline; a count-bound one at its last reply */
    if (r->issued >= r->max_requests && r->last_reply > 0 && r->last_reply <= r->deadline)
        b.t = r->last_reply;
    else
        b.t = r->deadline;
    double el = (b.t - a.t) / 1e9;
    /* the rate counts successful replies only; error replies are reported separately */
    out_num(rate_key, el > 0 ? (r->win_replies - r->win_errors) / el : 0);
    out_int("window_errors", r->win_errors);
    out_int("requests", r->issued);
    out_int("replies", r->replies);
    out_int("window_replies", r->win_replies);
    out_int("errors", r->errors);
    out_int("lost", r->outstanding);
    out_int("inflight", r->inflight);
    if (r->first_error[0])
        out_str("first_error", r->first_error);
    if (r->pub_err != NATS_OK)
        out_str("publish_error", natsStatus_GetText(r->pub_err));
    out_window(&a, &b);
    out_lat(&r->lat);
    pthread_mutex_unlock(&r->mu);
}

static void req_destroy(req_t *r)
{
    if (r->sub) {
        natsSubscription_Unsubscribe(r->sub);
        natsSubscription_Destroy(r->sub);
    }
    for (int i = 0; i < r->inflight; i++) {
        free(r->reply_subj[i]);
        if (r->frame)
            free(r->frame[i]);
    }
    free(r->reply_subj);
    free(r->frame);
    free(r->frame_len);
    free(r->sent_at);
    free(r->lat.v);
    free(r->lat_x.v);
    free(r->xflag);
}

/* one synchronous request; returns the reply (caller destroys) or dies */
static natsMsg *request(natsConnection *nc, const char *subj, const char *body, int len,
                        int64_t timeout_ms)
{
    natsMsg *m = NULL;
    natsStatus s = natsConnection_Request(&m, nc, subj, body, len, timeout_ms);
    if (s != NATS_OK)
        die("request %s: %s (%s)", subj, natsStatus_GetText(s), nats_GetLastError(NULL));
    return m;
}

static bool use_raw(void) { return !strcmp(O.engine, "raw"); }

/* ------------------------------------------------------------------ */
/* scenario: pubsub                                                    */
/* ------------------------------------------------------------------ */

static atomic_long g_received;

static atomic_long g_ps_corrupt;

static void ps_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    if (natsMsg_GetDataLength(msg) != O.size ||
        memcmp(natsMsg_GetData(msg), g_payload, (size_t)O.size) != 0)
        atomic_fetch_add_explicit(&g_ps_corrupt, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_received, 1, memory_order_relaxed);
    natsMsg_Destroy(msg);
}

static void run_pubsub_raw(void);
static void run_pubsub_multi(void);
static void run_reqrep_multi(void);
static void run_mq9send_multi(void);
static void run_jspub_multi(void);

static void run_pubsub(void)
{
    if (multi_mode()) {
        run_pubsub_multi();
        return;
    }
    if (use_raw()) {
        run_pubsub_raw();
        return;
    }
    long max_count = O.count > 0 ? O.count : 200000000L;
    char subj[64];
    snprintf(subj, sizeof subj, "bench.ps.%d", (int)getpid());
    natsConnection *snc = nats_connect("lg-sub", false);
    natsConnection *pnc = nats_connect("lg-pub", false);
    natsSubscription *sub = NULL;
    check_nats(natsConnection_Subscribe(&sub, snc, subj, ps_on_msg, NULL), "subscribe");
    natsSubscription_SetPendingLimits(sub, -1, -1);
    check_nats(natsConnection_FlushTimeout(snc, 5000), "flush sub");
    /* make sure the publisher's path sees the subscription (mq9fast and nats-server
       both apply SUB before answering the subscriber's PING) */
    check_nats(natsConnection_FlushTimeout(pnc, 5000), "flush pub");

    int64_t t0 = now_ns();
    int64_t ws = t0 + (int64_t)(O.warmup * 1e9);
    int64_t we = ws + (int64_t)(O.seconds * 1e9);
    long published = 0, pub_at_ws = 0, pub_at_we = 0, rcv_at_ws = 0, rcv_at_we = 0;
    long throttled = 0;
    mark_t ma = {0}, mb = {0};
    bool in_win = false;
    int64_t now = t0;
    natsStatus perr = NATS_OK;
    while (published < max_count) {
        natsStatus s = natsConnection_Publish(pnc, subj, g_payload, O.size);
        if (s != NATS_OK) {
            perr = s;
            break;
        }
        published++;
        if ((published & 255) == 0) {
            now = now_ns();
            if (!in_win && now >= ws) {
                in_win = true;
                ma = mark_now();
                pub_at_ws = published;
                rcv_at_ws = atomic_load(&g_received);
            }
            if (now >= we)
                break;
            /* end-to-end flow control: never more than `window` messages ahead of the
               subscriber, so neither broker builds an unbounded backlog */
            while (O.window > 0 && published - atomic_load(&g_received) > O.window) {
                throttled++;
                sleep_us(50);
                if (now_ns() >= we + 2000000000LL)
                    break;
            }
        }
        if (O.flush_every > 0 && published % O.flush_every == 0) {
            s = natsConnection_FlushTimeout(pnc, 10000);
            if (s != NATS_OK) {
                perr = s;
                break;
            }
        }
    }
    now = now_ns();
    if (!in_win) {
        ma = mark_now();
        pub_at_ws = 0;
        rcv_at_ws = 0;
        ma.t = t0;
    }
    mb = mark_now();
    pub_at_we = published;
    rcv_at_we = atomic_load(&g_received);
    natsConnection_FlushTimeout(pnc, 10000);
    /* drain: wait (bounded) for the remaining deliveries */
    int64_t dl = now_ns() + 3000000000LL;
    while (atomic_load(&g_received) < published && now_ns() < dl)
        sleep_us(1000);
    long total_rcv = atomic_load(&g_received);
    int64_t dropped = 0;
    natsSubscription_GetDropped(sub, &dropped);

    double el = (mb.t - ma.t) / 1e9;
    out_num("recv_rate", el > 0 ? (rcv_at_we - rcv_at_ws) / el : 0);
    out_num("pub_rate", el > 0 ? (pub_at_we - pub_at_ws) / el : 0);
    out_num("recv_mb_s", el > 0 ? (rcv_at_we - rcv_at_ws) * (double)O.size / el / 1e6 : 0);
    out_int("published", published);
    out_int("received", total_rcv);
    out_int("missing", published - total_rcv);
    out_int("client_dropped", (long long)dropped);
    out_int("corrupt", atomic_load(&g_ps_corrupt));
    out_str("engine", "libnats");
    out_int("throttle_waits", throttled);
    out_int("size", O.size);
    if (perr != NATS_OK)
        out_str("publish_error", natsStatus_GetText(perr));
    out_window(&ma, &mb);
    out_bool("ok", perr == NATS_OK && total_rcv > 0 && atomic_load(&g_ps_corrupt) == 0);

    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(pnc);
    natsConnection_Destroy(snc);
}


static long g_corrupt;

/* every delivered message must carry exactly the published bytes */
static void ps_raw_cb(void *ctx, rconn_t *c, const char *subj, size_t sl, const char *reply,
                      size_t rl, const char *data, int n)
{
    (void)ctx; (void)c; (void)subj; (void)sl; (void)reply; (void)rl;
    if (n != O.size || memcmp(data, g_payload, (size_t)n) != 0)
        g_corrupt++;
}

/* raw engine pubsub: one thread writes pre-rendered PUB blocks and counts MSG frames */
static void run_pubsub_raw(void)
{
    long max_count = O.count > 0 ? O.count : 200000000L;
    char subj[64], line[128];
    snprintf(subj, sizeof subj, "bench.ps.%d", (int)getpid());
    rconn_t *sub = rc_open();
    rconn_t *pub = rc_open();
    int ll = snprintf(line, sizeof line, "SUB %s 1\r\n", subj);
    rc_append(sub, line, (size_t)ll);
    rc_sync(sub, NULL, NULL);
    rc_sync(pub, NULL, NULL);
    /* one block = 256 frames */
    enum { BLK = 256 };
    int hl = snprintf(line, sizeof line, "PUB %s %d\r\n", subj, O.size);
    size_t flen = (size_t)hl + (size_t)O.size + 2;
    char *block = malloc(flen * BLK);
    for (int i = 0; i < BLK; i++) {
        char *f = block + (size_t)i * flen;
        memcpy(f, line, (size_t)hl);
        memcpy(f + hl, g_payload, (size_t)O.size);
        memcpy(f + hl + O.size, "\r\n", 2);
    }
    int64_t t0 = now_ns();
    int64_t ws = t0 + (int64_t)(O.warmup * 1e9);
    int64_t we = ws + (int64_t)(O.seconds * 1e9);
    long published = 0, pub_ws = 0, rcv_ws = 0, pub_we = 0, rcv_we = 0, throttled = 0;
    bool in_win = false, ended = false;
    mark_t ma = {0}, mb = {0};
    rconn_t *cs[2] = {sub, pub};
    int64_t drain_limit = we + 3000000000LL;
    for (;;) {
        int64_t now = now_ns();
        if (!in_win && now >= ws) {
            in_win = true;
            ma = mark_now();
            pub_ws = published;
            rcv_ws = sub->msgs;
        }
        if (!ended && (now >= we || published >= max_count)) {
            ended = true;
            mb = mark_now();
            pub_we = published;
            rcv_we = sub->msgs;
        }
        if (ended && (sub->msgs >= published || now >= drain_limit))
            break;
        if (sub->closed || pub->closed)
            break;
        bool progress = false;
        if (!ended && rc_pending(pub) < (1 << 20)) {
            if (O.window <= 0 || published - sub->msgs <= O.window - BLK) {
                rc_append(pub, block, flen * BLK);
                published += BLK;
                progress = true;
            } else {
                throttled++;
            }
        }
        progress |= rc_flush(pub);
        progress |= rc_pump(sub, ps_raw_cb, NULL);
        if ((published & 0xFFFF) == 0)
            rc_pump(pub, NULL, NULL); /* answer PINGs, catch -ERR */
        if (!progress)
            rc_wait(cs, 2, 5);
    }
    if (!in_win) {
        ma = mark_now();
        ma.t = t0;
    }
    if (!ended) {
        mb = mark_now();
        pub_we = published;
        rcv_we = sub->msgs;
    }
    double el = (mb.t - ma.t) / 1e9;
    out_num("recv_rate", el > 0 ? (rcv_we - rcv_ws) / el : 0);
    out_num("pub_rate", el > 0 ? (pub_we - pub_ws) / el : 0);
    out_num("recv_mb_s", el > 0 ? (rcv_we - rcv_ws) * (double)O.size / el / 1e6 : 0);
    out_int("published", published);
    out_int("received", sub->msgs);
    out_int("missing", published - sub->msgs);
    out_int("throttle_waits", throttled);
    out_int("corrupt", g_corrupt);
    out_int("size", O.size);
    out_str("engine", "raw");
    if (sub->err[0])
        out_str("sub_error", sub->err);
    if (pub->err[0])
        out_str("pub_error", pub->err);
    out_window(&ma, &mb);
    out_bool("ok", sub->msgs > 0 && !pub->closed && !sub->closed && g_corrupt == 0);
    free(block);
    rc_close(pub);
    rc_close(sub);
}

/* ------------------------------------------------------------------ */
/* scenario: reqrep (core NATS request/reply with a responder)        */
/* ------------------------------------------------------------------ */

static void rr_responder(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    if (reply)
        natsConnection_Publish(nc, reply, natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

typedef struct {
    natsConnection *nc;
    natsSubscription *sub;
    char subject[64];
} responder_t;

static void responder_start(responder_t *rs)
{
    snprintf(rs->subject, sizeof rs->subject, "bench.rr.%d", (int)getpid());
    rs->nc = nats_connect("lg-responder", O.asap != 0);
    check_nats(natsConnection_Subscribe(&rs->sub, rs->nc, rs->subject, rr_responder, NULL),
               "responder subscribe");
    natsSubscription_SetPendingLimits(rs->sub, -1, -1);
    check_nats(natsConnection_FlushTimeout(rs->nc, 5000), "responder flush");
}

static void responder_stop(responder_t *rs)
{
    natsSubscription_Unsubscribe(rs->sub);
    natsSubscription_Destroy(rs->sub);
    natsConnection_Destroy(rs->nc);
}

static void run_reqrep(void)
{
    if (multi_mode()) {
        run_reqrep_multi();
        return;
    }
    req_t r;
    if (use_raw()) {
        char subj[64], line[128];
        snprintf(subj, sizeof subj, "bench.rr.%d", (int)getpid());
        rconn_t *resp = rc_open();
        int ll = snprintf(line, sizeof line, "SUB %s 1\r\n", subj);
        rc_append(resp, line, (size_t)ll);
        rc_sync(resp, NULL, NULL);
        rconn_t *req = rc_open();
        req_init(&r, NULL, req, subj, O.inflight, CHECK_ECHO, BODY_FIXED, O.count);
        req_run_ex(&r, resp, O.warmup, O.seconds);
        req_report(&r, "rate");
        if (resp->err[0])
            out_str("responder_error", resp->err);
        rc_close(req);
        rc_close(resp);
    } else {
        responder_t rs;
        responder_start(&rs);
        natsConnection *nc = nats_connect("lg-requester", O.asap != 0);
        req_init(&r, nc, NULL, rs.subject, O.inflight, CHECK_ECHO, BODY_FIXED, O.count);
        req_run(&r, O.warmup, O.seconds);
        req_report(&r, "rate");
        natsConnection_Destroy(nc);
        responder_stop(&rs);
    }
    out_str("engine", O.engine);
    out_int("size", O.size);
    out_bool("ok", r.win_replies > 0 && r.errors == 0);
    req_destroy(&r);
}

/* ------------------------------------------------------------------ */
/* mq9 helpers                                                         */
/* ------------------------------------------------------------------ */

/* CREATE the mailbox; "already exists" is fine.  Returns false (and fills err) if the
   broker does not support the command. */
static bool mq9_create(natsConnection *nc, const char *addr, char *err, size_t errcap)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"name\":\"%s\",\"ttl\":0}", addr);
    natsMsg *m = request(nc, "$mq9.AI.MAILBOX.CREATE", body, n, 10000);
    const char *d = natsMsg_GetData(m);
    int dl = natsMsg_GetDataLength(m);
    bool ok = mq9_ok(d, dl) || (dl > 0 && memmem(d, (size_t)dl, "already exists", 14));
    if (!ok)
        excerpt(err, errcap, d, dl);
    natsMsg_Destroy(m);
    return ok;
}

static void run_mq9send(void)
{
    if (multi_mode()) {
        run_mq9send_multi();
        return;
    }
    char addr[160];
    if (O.mailbox)
        snprintf(addr, sizeof addr, "%s", O.mailbox);
    else
        snprintf(addr, sizeof addr, "bench.send.%d", (int)getpid());
    natsConnection *nc = nats_connect("lg-mq9send", O.asap != 0);
    char err[300] = "";
    if (!mq9_create(nc, addr, err, sizeof err)) {
        out_bool("ok", false);
        out_bool("unsupported", true);
        out_str("error", err);
        natsConnection_Destroy(nc);
        return;
    }
    char subj[256];
    snprintf(subj, sizeof subj, "$mq9.AI.MSG.SEND.%s", addr);
    req_t r;
    rconn_t *raw = use_raw() ? rc_open() : NULL;
    req_init(&r, raw ? NULL : nc, raw, subj, O.inflight, CHECK_MQ9, BODY_FIXED, O.count);
    req_run(&r, O.warmup, O.seconds);
    req_report(&r, "rate");
    rc_close(raw);
    out_str("engine", O.engine);
    out_str("mailbox", addr);
    out_int("size", O.size);
    out_bool("ok", r.win_replies > 0 && r.errors < r.replies);
    if (r.errors == r.replies)
        out_bool("unsupported", true);
    req_destroy(&r);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* JetStream helpers                                                   */
/* ------------------------------------------------------------------ */

static jsCtx *js_setup_stream(natsConnection *nc, const char *name, const char *subject)
{
    jsCtx *js = NULL;
    jsErrCode jerr = 0;
    check_nats(natsConnection_JetStream(&js, nc, NULL), "JetStream context");
    js_DeleteStream(js, name, NULL, &jerr); /* ignore: may not exist */
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    const char *subs[1] = {subject};
    cfg.Subjects = subs;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo *si = NULL;
    natsStatus s = js_AddStream(&si, js, &cfg, NULL, &jerr);
    if (s != NATS_OK)
        die("js_AddStream %s: %s (jerr %d, %s)", name, natsStatus_GetText(s), (int)jerr,
            nats_GetLastError(NULL));
    jsStreamInfo_Destroy(si);
    return js;
}

static void run_jspub(void)
{
    if (multi_mode()) {
        run_jspub_multi();
        return;
    }
    char subj[160];
    snprintf(subj, sizeof subj, "bench.js.%s", O.stream);
    natsConnection *nc = nats_connect("lg-jspub", O.asap != 0);
    jsCtx *js = js_setup_stream(nc, O.stream, subj);
    /* plain requests to the stream subject, K in flight: JetStream answers each with a
       PubAck JSON, exactly like an mq9 SEND reply; same code path as mq9send */
    req_t r;
    rconn_t *raw = use_raw() ? rc_open() : NULL;
    req_init(&r, raw ? NULL : nc, raw, subj, O.inflight, CHECK_JSACK, BODY_FIXED, O.count);
    req_run(&r, O.warmup, O.seconds);
    req_report(&r, "rate");
    rc_close(raw);
    out_str("engine", O.engine);
    out_str("stream", O.stream);
    out_int("size", O.size);
    out_bool("ok", r.win_replies > 0 && r.errors == 0);
    req_destroy(&r);
    jsErrCode jerr;
    js_DeleteStream(js, O.stream, NULL, &jerr);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* many connections: --conns N (publishers / requesters / senders),    */
/* --subs S, --responders R, --route shared|split|local                */
/*                                                                      */
/* Raw engine only.  All connections are opened one after the other     */
/* with a plain connect(), so with mq9fast --workers N the kernel's      */
/* SO_REUSEPORT hashing spreads them over the workers exactly as it      */
/* would spread real clients; the INFO line of each connection tells     */
/* which worker took it ("worker_id"; nats-server has none = 0).  One     */
/* thread drives every socket through one epoll set; each connection   */
/* keeps its own buffers, flow control and in-flight slots.              */
/* ------------------------------------------------------------------ */

#define MAXW 64

static int worker_of(const rconn_t *c) { return c->worker < 0 ? 0 : (c->worker >= MAXW ? MAXW - 1 : c->worker); }

/* "w0:33,w1:31": how the kernel spread these connections over the workers */
static void out_workers(const char *key, rconn_t **cs, int n)
{
    int cnt[MAXW] = {0}, maxw = 0;
    for (int i = 0; i < n; i++) {
        int w = worker_of(cs[i]);
        cnt[w]++;
        if (w > maxw)
            maxw = w;
    }
    char buf[1024];
    size_t l = 0;
    for (int w = 0; w <= maxw && l < sizeof buf - 32; w++)
        l += (size_t)snprintf(buf + l, sizeof buf - l, "%sw%d:%d", w ? "," : "", w, cnt[w]);
    out_str(key, buf);
}

static rconn_t **open_many(int n)
{
    rconn_t **cs = calloc((size_t)n, sizeof *cs);
    for (int i = 0; i < n; i++)
        cs[i] = rc_open();
    return cs;
}

static void close_many(rconn_t **cs, int n)
{
    for (int i = 0; i < n; i++)
        rc_close(cs[i]);
    free(cs);
}

/* every connection of a scenario on one epoll set (level-triggered EPOLLIN; EPOLLOUT only
   while a connection has output the kernel did not take) */
typedef struct {
    int ep;
    rconn_t **c;
    int n;
    uint8_t *want_out;
    struct epoll_event *evs;
    int nready;
} pset_t;

static void pset_add(pset_t *p, rconn_t **cs, int n)
{
    if (p->n == 0 && p->ep <= 0)
        p->ep = epoll_create1(EPOLL_CLOEXEC);
    p->c = realloc(p->c, (size_t)(p->n + n) * sizeof *p->c);
    p->want_out = realloc(p->want_out, (size_t)(p->n + n));
    p->evs = realloc(p->evs, (size_t)(p->n + n) * sizeof *p->evs);
    for (int i = 0; i < n; i++) {
        int idx = p->n + i;
        p->c[idx] = cs[i];
        p->want_out[idx] = 0;
        struct epoll_event ee = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
        if (epoll_ctl(p->ep, EPOLL_CTL_ADD, cs[i]->fd, &ee) != 0)
            die("epoll_ctl: %s", strerror(errno));
    }
    p->n += n;
}

static void pset_poll(pset_t *p, int timeout_ms)
{
    for (int i = 0; i < p->n; i++) {
        rconn_t *c = p->c[i];
        uint8_t want = !c->closed && rc_pending(c) > 0;
        if (want != p->want_out[i] && !c->closed) {
            struct epoll_event ee = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)i};
            epoll_ctl(p->ep, EPOLL_CTL_MOD, c->fd, &ee);
            p->want_out[i] = want;
        }
    }
    p->nready = epoll_wait(p->ep, p->evs, p->n, timeout_ms);
    if (p->nready < 0)
        p->nready = 0;
}

static void pset_free(pset_t *p)
{
    if (p->ep > 0)
        close(p->ep);
    free(p->c);
    free(p->want_out);
    free(p->evs);
}

static bool any_closed(rconn_t **cs, int n, char *err, size_t cap)
{
    for (int i = 0; i < n; i++)
        if (cs[i]->closed) {
            if (err && !err[0])
                snprintf(err, cap, "%s", cs[i]->err[0] ? cs[i]->err : "connection closed");
            return true;
        }
    return false;
}

/* -------------------------------------------------------------- pubsub */

/*
 * Fan-in: N publisher connections, S subscriber connections.  Publisher i
 * publishes to bench.ps.<pid>.<t>.<i>, where t is its target subscriber:
 *   shared  every publisher targets t = 0 and the S subscribers subscribe to
 *           bench.ps.<pid>.0.* (S = 1: one plain subscription, the classic
 *           fan-in; S > 1: one queue group "q", the broker picks the member);
 *   split   t = i mod S, subscriber t subscribes to bench.ps.<pid>.<t>.*
 *           (placement-blind: publisher and subscriber are on the same worker
 *           only by chance);
 *   local   t = a subscriber that the kernel placed on the publisher's own
 *           worker (round-robin among them; any subscriber if that worker has
 *           none): the no-link-traffic upper bound of --workers N.
 * The last subject token tells the receiver which publisher sent a message,
 * so flow control is per publisher: publisher i never runs more than
 * window/N messages (at least 2 blocks) ahead of what has been received from
 * it, and a publisher whose path is slower simply publishes less; nobody
 * builds an unbounded backlog.  Blocks of 128 frames; a connection gets its
 * next block only when the previous one is entirely in the kernel.
 * Measured: messages/s received (all subscribers) inside the window; also
 * the share of deliveries that crossed between workers (publisher's worker
 * != subscriber's worker), exact.
 */
typedef struct {
    long *recv;       /* per publisher */
    int npub;
    long received, cross, corrupt;
    int *pub_worker;
} mps_t;

typedef struct {
    mps_t *st;
    int worker;
} mps_sub_t;

static mps_sub_t *g_mps_subs;

static void mps_cb(void *ctx, rconn_t *c, const char *subj, size_t sl, const char *reply,
                   size_t rl, const char *data, int n)
{
    (void)reply; (void)rl;
    mps_sub_t *sub = ctx;
    mps_t *st = sub->st;
    /* last token = publisher index */
    size_t k = sl;
    while (k > 0 && subj[k - 1] != '.')
        k--;
    long i = 0;
    for (size_t j = k; j < sl && subj[j] >= '0' && subj[j] <= '9'; j++)
        i = i * 10 + (subj[j] - '0');
    if (n != O.size || memcmp(data, g_payload, (size_t)n) != 0)
        st->corrupt++;
    st->received++;
    if (i >= 0 && i < st->npub) {
        st->recv[i]++;
        if (st->pub_worker[i] != worker_of(c))
            st->cross++;
    }
}

static void run_pubsub_multi(void)
{
    if (!use_raw())
        die("--conns/--subs/--route need --engine raw");
    int np = O.conns, ns = O.subs;
    bool shared = !strcmp(O.route, "shared"), local = !strcmp(O.route, "local");
    long max_count = O.count > 0 ? O.count : 2000000000L;
    enum { MBLK = 128 }; /* frames per write: ~19 KB with 128-byte bodies */
    char base[64], line[256];
    snprintf(base, sizeof base, "bench.ps.%d", (int)getpid());

    rconn_t **subs = open_many(ns);
    mps_t st = {0};
    st.npub = np;
    st.recv = calloc((size_t)np, sizeof(long));
    st.pub_worker = calloc((size_t)np, sizeof(int));
    g_mps_subs = calloc((size_t)ns, sizeof *g_mps_subs);
    for (int j = 0; j < ns; j++) {
        g_mps_subs[j].st = &st;
        g_mps_subs[j].worker = worker_of(subs[j]);
        int ll;
        if (shared)
            ll = ns > 1 ? snprintf(line, sizeof line, "SUB %s.0.* q 1\r\n", base)
                        : snprintf(line, sizeof line, "SUB %s.0.* 1\r\n", base);
        else
            ll = snprintf(line, sizeof line, "SUB %s.%d.* 1\r\n", base, j);
        rc_append(subs[j], line, (size_t)ll);
        /* mq9fast --workers: the PONG comes once every worker knows the interest */
        rc_sync(subs[j], NULL, NULL);
    }
    rconn_t **pubs = open_many(np);
    int *target = calloc((size_t)np, sizeof(int));
    int rr[MAXW] = {0}, fallback = 0;
    for (int i = 0; i < np; i++) {
        st.pub_worker[i] = worker_of(pubs[i]);
        if (shared)
            target[i] = 0;
        else if (!local)
            target[i] = i % ns;
        else {
            int w = worker_of(pubs[i]), cnt = 0;
            for (int j = 0; j < ns; j++)
                cnt += g_mps_subs[j].worker == w;
            if (cnt == 0) {
                target[i] = i % ns;
                fallback++;
                continue;
            }
            int pick = rr[w]++ % cnt;
            for (int j = 0; j < ns; j++)
                if (g_mps_subs[j].worker == w && pick-- == 0) {
                    target[i] = j;
                    break;
                }
        }
    }
    /* one pre-rendered block per publisher (its own subject) */
    char **blk = calloc((size_t)np, sizeof(char *));
    size_t *blen = calloc((size_t)np, sizeof(size_t));
    for (int i = 0; i < np; i++) {
        int hl = snprintf(line, sizeof line, "PUB %s.%d.%d %d\r\n", base, target[i], i, O.size);
        size_t flen = (size_t)hl + (size_t)O.size + 2;
        blen[i] = flen * MBLK;
        blk[i] = malloc(blen[i]);
        for (int b = 0; b < MBLK; b++) {
            char *f = blk[i] + (size_t)b * flen;
            memcpy(f, line, (size_t)hl);
            memcpy(f + hl, g_payload, (size_t)O.size);
            memcpy(f + hl + O.size, "\r\n", 2);
        }
    }
    long lim = O.window > 0 ? O.window / np : 0;
    if (O.window > 0 && lim < 2 * MBLK)
        lim = 2 * MBLK;

    pset_t ps = {0};
    pset_add(&ps, subs, ns);
    pset_add(&ps, pubs, np);
    int64_t t0 = now_ns();
    int64_t ws = t0 + (int64_t)(O.warmup * 1e9);
    int64_t we = ws + (int64_t)(O.seconds * 1e9);
    int64_t drain_limit = we + 3000000000LL;
    long published = 0, pub_ws = 0, rcv_ws = 0, pub_we = 0, rcv_we = 0, throttled = 0;
    long cross_ws = 0, cross_we = 0;
    bool in_win = false, ended = false;
    mark_t ma = {0}, mb = {0};
    char err[200] = "";
    int rot = 0;
    for (;;) {
        int64_t now = now_ns();
        if (!in_win && now >= ws) {
            in_win = true;
            ma = mark_now();
            pub_ws = published;
            rcv_ws = st.received;
            cross_ws = st.cross;
        }
        if (!ended && (now >= we || published >= max_count)) {
            ended = true;
            mb = mark_now();
            pub_we = published;
            rcv_we = st.received;
            cross_we = st.cross;
        }
        if (ended && (st.received >= published || now >= drain_limit))
            break;
        if (any_closed(subs, ns, err, sizeof err) || any_closed(pubs, np, err, sizeof err))
            break;
        bool progress = false;
        if (!ended) {
            for (int k = 0; k < np && published < max_count; k++) {
                int i = (rot + k) % np;
                rconn_t *p = pubs[i];
                if (rc_pending(p) > 0)
                    continue; /* its last block is not in the kernel yet */
                if (lim > 0 && p->published - st.recv[i] > lim - MBLK) {
                    throttled++;
                    continue;
                }
                rc_append(p, blk[i], blen[i]);
                p->published += MBLK;
                published += MBLK;
                progress |= rc_flush(p);
            }
            rot = (rot + 1) % np;
        }
        pset_poll(&ps, progress ? 0 : 2);
        for (int e = 0; e < ps.nready; e++) {
            uint32_t ev = ps.evs[e].events;
            int k = (int)ps.evs[e].data.u32;
            rconn_t *c = ps.c[k];
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
                rc_pump(c, k < ns ? mps_cb : NULL, k < ns ? (void *)&g_mps_subs[k] : NULL);
            if (rc_pending(c))
                rc_flush(c);
        }
    }
    if (!in_win) {
        ma = mark_now();
        ma.t = t0;
    }
    if (!ended) {
        mb = mark_now();
        pub_we = published;
        rcv_we = st.received;
        cross_we = st.cross;
    }
    double el = (mb.t - ma.t) / 1e9;
    out_num("recv_rate", el > 0 ? (rcv_we - rcv_ws) / el : 0);
    out_num("pub_rate", el > 0 ? (pub_we - pub_ws) / el : 0);
    out_num("recv_mb_s", el > 0 ? (rcv_we - rcv_ws) * (double)O.size / el / 1e6 : 0);
    out_int("published", published);
    out_int("received", st.received);
    out_int("missing", published - st.received);
    out_int("throttle_waits", throttled);
    out_int("corrupt", st.corrupt);
    out_int("size", O.size);
    out_str("engine", "raw");
    out_int("conns", np);
    out_int("subs", ns);
    out_str("route", O.route);
    out_int("window_per_pub", lim);
    out_workers("pub_workers", pubs, np);
    out_workers("sub_workers", subs, ns);
    if (local && fallback)
        out_int("local_fallback", fallback);
    /* deliveries whose publisher and subscriber sat on different workers (went over a link) */
    out_num("cross_frac", rcv_we > rcv_ws ? (double)(cross_we - cross_ws) / (double)(rcv_we - rcv_ws) : 0);
    long mn = -1, mx = 0;
    for (int i = 0; i < np; i++) {
        if (mn < 0 || pubs[i]->published < mn)
            mn = pubs[i]->published;
        if (pubs[i]->published > mx)
            mx = pubs[i]->published;
    }
    out_int("pub_min", mn);
    out_int("pub_max", mx);
    if (err[0])
        out_str("error", err);
    out_window(&ma, &mb);
    out_bool("ok", st.received > 0 && !err[0] && st.corrupt == 0);
    for (int i = 0; i < np; i++)
        free(blk[i]);
    free(blk);
    free(blen);
    free(target);
    pset_free(&ps);
    close_many(pubs, np);
    close_many(subs, ns);
    free(st.recv);
    free(st.pub_worker);
    free(g_mps_subs);
}

/* ------------------------------------------------- pipelined requesters */

/*
 * N requester connections, each with its own req_t (K in flight, own inbox
 * wildcard, own reply slots), plus optional responder connections, all on one
 * epoll loop.  The window is global: every req_t gets the same start and
 * deadline; CPU marks are taken once at the window boundaries.
 */
typedef struct {
    int worker;
    long handled, cross;
} mresp_t;

static int *g_req_worker;
static req_t *g_req_rs;
static int g_req_n, g_req_serial0;
static char g_inbox_pfx[64];
static size_t g_inbox_pfx_len;

/* echo the request to its reply subject; count requests whose requester sits on another worker */
static void mresp_cb(void *ctx, rconn_t *c, const char *subj, size_t sl, const char *reply,
                     size_t rl, const char *data, int n)
{
    mresp_t *st = ctx;
    if (!reply)
        return;
    st->handled++;
    if (rl > g_inbox_pfx_len && !memcmp(reply, g_inbox_pfx, g_inbox_pfx_len)) {
        long serial = 0;
        for (size_t j = g_inbox_pfx_len; j < rl && reply[j] >= '0' && reply[j] <= '9'; j++)
            serial = serial * 10 + (reply[j] - '0');
        long idx = serial - g_req_serial0;
        if (idx >= 0 && idx < g_req_n) {
            bool cross = g_req_worker[idx] != st->worker;
            st->cross += cross;
            /* the requester files this request's latency under cross / local */
            const char *dot = memchr(reply + g_inbox_pfx_len, '.', rl - g_inbox_pfx_len);
            req_t *r = &g_req_rs[idx];
            if (dot && r->xflag) {
                long slot = 0;
                for (const char *q = dot + 1; q < reply + rl && *q >= '0' && *q <= '9'; q++)
                    slot = slot * 10 + (*q - '0');
                if (slot >= 0 && slot < r->inflight)
                    r->xflag[slot] = cross;
            }
        }
    }
    raw_responder_cb(NULL, c, subj, sl, reply, rl, data, n);
}

static void multi_req_setup(req_t *rs, rconn_t **cs, int n, char **subjects, int check)
{
    snprintf(g_inbox_pfx, sizeof g_inbox_pfx, "_INBOX.lg%d_", (int)getpid());
    g_inbox_pfx_len = strlen(g_inbox_pfx);
    g_req_serial0 = g_req_serial;
    g_req_n = n;
    g_req_rs = rs;
    g_req_worker = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++) {
        g_req_worker[i] = worker_of(cs[i]);
        req_init(&rs[i], NULL, cs[i], subjects[i], O.inflight, check, BODY_FIXED, O.count);
    }
}

static void multi_req_run(req_t *rs, int n, rconn_t **resp, mresp_t *rst, int nr, mark_t *ma,
                          mark_t *mb, char *err, size_t errcap)
{
    int64_t t0 = now_ns();
    int64_t ws = t0 + (int64_t)(O.warmup * 1e9);
    int64_t we = ws + (int64_t)(O.seconds * 1e9);
    int64_t hard = we + 10LL * 1000000000LL;
    rconn_t **reqc = calloc((size_t)n, sizeof *reqc);
    for (int i = 0; i < n; i++) {
        req_t *r = &rs[i];
        reqc[i] = r->raw;
        r->win_start = ws;
        r->deadline = we;
        r->m_start_set = r->m_end_set = true; /* marks are taken here, once */
        pthread_mutex_lock(&r->mu);
        for (int k = 0; k < r->inflight && r->issued < r->max_requests; k++)
            req_issue(r, k, now_ns());
        pthread_mutex_unlock(&r->mu);
        rc_flush(r->raw);
    }
    pset_t ps = {0};
    pset_add(&ps, reqc, n);
    if (nr)
        pset_add(&ps, resp, nr);
    bool in_win = false, ended = false;
    for (;;) {
        int64_t now = now_ns();
        if (!in_win && now >= ws) {
            in_win = true;
            *ma = mark_now();
        }
        if (!ended && now >= we) {
            ended = true;
            *mb = mark_now();
        }
        if (ended) {
            long out = 0;
            for (int i = 0; i < n; i++)
                out += rs[i].outstanding;
            if (out == 0)
                break;
        }
        if (now >= hard)
            break;
        if (any_closed(reqc, n, err, errcap) || (nr && any_closed(resp, nr, err, errcap)))
            break;
        pset_poll(&ps, 2);
        for (int e = 0; e < ps.nready; e++) {
            uint32_t ev = ps.evs[e].events;
            int k = (int)ps.evs[e].data.u32;
            rconn_t *c = ps.c[k];
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (k < n)
                    rc_pump(c, req_raw_cb, &rs[k]);
                else
                    rc_pump(c, mresp_cb, &rst[k - n]);
            }
            if (rc_pending(c))
                rc_flush(c);
        }
    }
    if (!in_win)
        *ma = mark_now();
    if (!ended)
        *mb = mark_now();
    pset_free(&ps);
    free(reqc);
}

/* aggregate figures of the N requesters; rate = successful replies in the window / window */
static void multi_req_report(req_t *rs, int n, rconn_t **cs, mark_t *ma, mark_t *mb, const char *err)
{
    long win = 0, win_err = 0, issued = 0, replies = 0, errors = 0, lost = 0, mn = -1, mx = 0;
    lat_t all = {0};
    const char *first = NULL;
    for (int i = 0; i < n; i++) {
        req_t *r = &rs[i];
        win += r->win_replies;
        win_err += r->win_errors;
        issued += r->issued;
        replies += r->replies;
        errors += r->errors;
        lost += r->outstanding;
        if (mn < 0 || r->win_replies < mn)
            mn = r->win_replies;
        if (r->win_replies > mx)
            mx = r->win_replies;
        if (!first && r->first_error[0])
            first = r->first_error;
        for (size_t k = 0; k < r->lat.n; k++)
            lat_add(&all, r->lat.v[k]);
        for (size_t k = 0; k < r->lat_x.n; k++)
            lat_add(&all, r->lat_x.v[k]);
    }
    double el = O.seconds;
    out_num("rate", el > 0 ? (win - win_err) / el : 0);
    out_int("window_errors", win_err);
    out_int("requests", issued);
    out_int("replies", replies);
    out_int("window_replies", win);
    out_int("errors", errors);
    out_int("lost", lost);
    out_int("inflight", O.inflight);
    out_int("conns", n);
    out_int("conn_replies_min", mn);
    out_int("conn_replies_max", mx);
    out_workers("conn_workers", cs, n);
    if (first)
        out_str("first_error", first);
    else if (err && err[0])
        out_str("first_error", err);
    if (err && err[0])
        out_str("error", err);
    out_window(ma, mb);
    out_lat(&all);
    free(all.v);
    /* reqrep: latency of requests answered on the requester's own worker vs on another one */
    bool split = false;
    for (int i = 0; i < n; i++)
        split |= rs[i].xflag != NULL;
    if (split) {
        lat_t loc = {0}, x = {0};
        for (int i = 0; i < n; i++) {
            for (size_t k = 0; k < rs[i].lat.n; k++)
                lat_add(&loc, rs[i].lat.v[k]);
            for (size_t k = 0; k < rs[i].lat_x.n; k++)
                lat_add(&x, rs[i].lat_x.v[k]);
        }
        out_lat_p(&loc, "same_worker_");
        out_lat_p(&x, "cross_worker_");
        free(loc.v);
        free(x.v);
    }
}

/*
 * reqrep with many connections: N requesters with K in flight each; R
 * responder connections in queue group "q" echo every request.
 *   shared  one subject bench.rr.<pid>; the broker picks the member (with
 *           --workers, among its local members and the links that advertise
 *           the group);
 *   local   responders subscribe to bench.rr.<pid>.w<their worker>, a
 *           requester sends to the subject of its own worker (any worker
 *           with responders if its own has none): no link traffic.
 */
static void run_reqrep_multi(void)
{
    if (!use_raw())
        die("--conns/--responders/--route need --engine raw");
    bool local = !strcmp(O.route, "local");
    if (!local && strcmp(O.route, "shared"))
        die("reqrep: --route shared or local");
    int n = O.conns, nr = O.responders;
    char base[64], line[256];
    snprintf(base, sizeof base, "bench.rr.%d", (int)getpid());
    rconn_t **resp = open_many(nr);
    mresp_t *rst = calloc((size_t)nr, sizeof *rst);
    bool has[MAXW] = {false};
    for (int j = 0; j < nr; j++) {
        rst[j].worker = worker_of(resp[j]);
        has[rst[j].worker] = true;
        int ll = local ? snprintf(line, sizeof line, "SUB %s.w%d q 1\r\n", base, rst[j].worker)
                       : snprintf(line, sizeof line, "SUB %s q 1\r\n", base);
        rc_append(resp[j], line, (size_t)ll);
        rc_sync(resp[j], NULL, NULL);
    }
    rconn_t **cs = open_many(n);
    char **subjects = calloc((size_t)n, sizeof(char *));
    int fallback = 0;
    for (int i = 0; i < n; i++) {
        char s[128];
        if (local) {
            int w = worker_of(cs[i]);
            if (!has[w]) {
                fallback++;
                w = rst[i % nr].worker;
            }
            snprintf(s, sizeof s, "%s.w%d", base, w);
        } else
            snprintf(s, sizeof s, "%s", base);
        subjects[i] = strdup(s);
    }
    req_t *rs = calloc((size_t)n, sizeof *rs);
    multi_req_setup(rs, cs, n, subjects, CHECK_ECHO);
    for (int i = 0; i < n; i++)
        rs[i].xflag = calloc((size_t)O.inflight, 1);
    mark_t ma = {0}, mb = {0};
    char err[200] = "";
    multi_req_run(rs, n, resp, rst, nr, &ma, &mb, err, sizeof err);
    multi_req_report(rs, n, cs, &ma, &mb, err);
    long handled = 0, cross = 0;
    for (int j = 0; j < nr; j++) {
        handled += rst[j].handled;
        cross += rst[j].cross;
    }
    out_int("responders", nr);
    out_str("route", O.route);
    out_workers("responder_workers", resp, nr);
    if (fallback)
        out_int("local_fallback", fallback);
    /* requests answered by a responder on another worker: request and reply both crossed */
    out_num("cross_frac", handled ? (double)cross / handled : 0);
    out_str("engine", "raw");
    out_int("size", O.size);
    long errors = 0, win = 0;
    for (int i = 0; i < n; i++) {
        errors += rs[i].errors;
        win += rs[i].win_replies;
    }
    out_bool("ok", win > 0 && errors == 0 && !err[0]);
    for (int i = 0; i < n; i++) {
        req_destroy(&rs[i]);
        free(subjects[i]);
    }
    free(rs);
    free(subjects);
    free(g_req_worker);
    free(rst);
    close_many(cs, n);
    close_many(resp, nr);
}

/*
 * mq9send with many connections: M mailboxes (--mailboxes, default one per
 * connection) are CREATEd first; connection i sends to mailbox i mod M with
 * K in flight.  No responders: the broker answers every SEND itself.
 */
static void run_mq9send_multi(void)
{
    if (!use_raw())
        die("--conns needs --engine raw");
    int n = O.conns, m = O.mailboxes > 0 ? O.mailboxes : n;
    char prefix[128];
    if (O.mailbox)
        snprintf(prefix, sizeof prefix, "%s", O.mailbox);
    else
        snprintf(prefix, sizeof prefix, "bench.send.%d", (int)getpid());
    natsConnection *nc = nats_connect("lg-mq9send", O.asap != 0);
    char err[300] = "";
    for (int j = 0; j < m; j++) {
        char addr[200];
        snprintf(addr, sizeof addr, "%s.%d", prefix, j);
        if (!mq9_create(nc, addr, err, sizeof err)) {
            out_bool("ok", false);
            out_bool("unsupported", true);
            out_str("error", err);
            natsConnection_Destroy(nc);
            return;
        }
    }
    rconn_t **cs = open_many(n);
    char **subjects = calloc((size_t)n, sizeof(char *));
    for (int i = 0; i < n; i++) {
        char s[256];
        snprintf(s, sizeof s, "$mq9.AI.MSG.SEND.%s.%d", prefix, i % m);
        subjects[i] = strdup(s);
    }
    req_t *rs = calloc((size_t)n, sizeof *rs);
    multi_req_setup(rs, cs, n, subjects, CHECK_MQ9);
    mark_t ma = {0}, mb = {0};
    char rerr[200] = "";
    multi_req_run(rs, n, NULL, NULL, 0, &ma, &mb, rerr, sizeof rerr);
    multi_req_report(rs, n, cs, &ma, &mb, rerr);
    long errors = 0, replies = 0, win = 0;
    for (int i = 0; i < n; i++) {
        errors += rs[i].errors;
        replies += rs[i].replies;
        win += rs[i].win_replies;
    }
    out_str("engine", "raw");
    out_str("mailbox", prefix);
    out_int("mailboxes", m);
    out_int("size", O.size);
    out_bool("ok", win > 0 && errors < replies && !rerr[0]);
    if (replies > 0 && errors == replies)
        out_bool("unsupported", true);
    for (int i = 0; i < n; i++) {
        req_destroy(&rs[i]);
        free(subjects[i]);
    }
    free(rs);
    free(subjects);
    free(g_req_worker);
    close_many(cs, n);
    natsConnection_Destroy(nc);
}

/* jspub with many connections: one file stream on bench.js.<NAME>.*, connection i
   publishes to bench.js.<NAME>.<i mod M> with K in flight (PubAck per message) */
static void run_jspub_multi(void)
{
    if (!use_raw())
        die("--conns needs --engine raw");
    int n = O.conns, m = O.mailboxes > 0 ? O.mailboxes : n;
    char wild[160];
    snprintf(wild, sizeof wild, "bench.js.%s.*", O.stream);
    natsConnection *nc = nats_connect("lg-jspub", O.asap != 0);
    jsCtx *js = js_setup_stream(nc, O.stream, wild);
    rconn_t **cs = open_many(n);
    char **subjects = calloc((size_t)n, sizeof(char *));
    for (int i = 0; i < n; i++) {
        char s[256];
        snprintf(s, sizeof s, "bench.js.%s.%d", O.stream, i % m);
        subjects[i] = strdup(s);
    }
    req_t *rs = calloc((size_t)n, sizeof *rs);
    multi_req_setup(rs, cs, n, subjects, CHECK_JSACK);
    mark_t ma = {0}, mb = {0};
    char rerr[200] = "";
    multi_req_run(rs, n, NULL, NULL, 0, &ma, &mb, rerr, sizeof rerr);
    multi_req_report(rs, n, cs, &ma, &mb, rerr);
    long errors = 0, win = 0;
    for (int i = 0; i < n; i++) {
        errors += rs[i].errors;
        win += rs[i].win_replies;
    }
    out_str("engine", "raw");
    out_str("stream", O.stream);
    out_int("subjects", m);
    out_int("size", O.size);
    out_bool("ok", win > 0 && errors == 0 && !rerr[0]);
    for (int i = 0; i < n; i++) {
        req_destroy(&rs[i]);
        free(subjects[i]);
    }
    free(rs);
    free(subjects);
    free(g_req_worker);
    close_many(cs, n);
    jsErrCode jerr;
    js_DeleteStream(js, O.stream, NULL, &jerr);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* scenario: mq9fetch / jsfetch (pre-fill, then drain with ack)        */
/* ------------------------------------------------------------------ */

static bool prefill(natsConnection *nc, const char *subj, int check, long n, char *err,
                    size_t errcap, double *rate)
{
    req_t r;
    req_init(&r, nc, NULL, subj, 256, check, BODY_FIXED, n);
    req_run(&r, 0, O.timeout);
    bool ok = r.replies == n && r.errors == 0;
    if (!ok)
        snprintf(err, errcap, "prefill: %ld/%ld replies, %ld errors: %s", r.replies, n, r.errors,
                 r.first_error);
    double el = (r.last_reply - r.first_sent) / 1e9;
    *rate = el > 0 ? r.replies / el : 0;
    req_destroy(&r);
    return ok;
}

static void run_mq9fetch(void)
{
    long n = O.count > 0 ? O.count : 10000;
    char addr[160];
    if (O.mailbox)
        snprintf(addr, sizeof addr, "%s", O.mailbox);
    else
        snprintf(addr, sizeof addr, "bench.fetch.%d", (int)getpid());
    natsConnection *nc = nats_connect("lg-mq9fetch", true);
    char err[400] = "";
    if (!mq9_create(nc, addr, err, sizeof err)) {
        out_bool("ok", false);
        out_bool("unsupported", true);
        out_str("error", err);
        natsConnection_Destroy(nc);
        return;
    }
    char send_subj[256], fetch_subj[256], ack_subj[256];
    snprintf(send_subj, sizeof send_subj, "$mq9.AI.MSG.SEND.%s", addr);
    snprintf(fetch_subj, sizeof fetch_subj, "$mq9.AI.MSG.FETCH.%s", addr);
    snprintf(ack_subj, sizeof ack_subj, "$mq9.AI.MSG.ACK.%s", addr);
    double fill_rate = 0;
    if (!prefill(nc, send_subj, CHECK_MQ9, n, err, sizeof err, &fill_rate)) {
        out_bool("ok", false);
        out_str("error", err);
        if (strstr(err, "unrecognized") || strstr(err, "not supported"))
            out_bool("unsupported", true);
        natsConnection_Destroy(nc);
        return;
    }
    char fbody[256];
    int flen = snprintf(fbody, sizeof fbody,
                        "{\"group_name\":\"g\",\"deliver\":\"earliest\",\"config\":"
                        "{\"num_msgs\":%d,\"max_wait_ms\":0}}",
                        O.batch);
    lat_t lat = {0};
    long got = 0, fetches = 0, acks = 0, errors = 0;
    long long last = -1, prev_last = -1;
    int64_t limit = now_ns() + (int64_t)(O.timeout * 1e9);
    mark_t a = mark_now();
    while (got < n && now_ns() < limit) {
        int64_t t1 = now_ns();
        natsMsg *m = request(nc, fetch_subj, fbody, flen, 30000);
        fetches++;
        const char *d = natsMsg_GetData(m);
        int dl = natsMsg_GetDataLength(m);
        if (!mq9_ok(d, dl)) {
            errors++;
            if (!err[0])
                excerpt(err, sizeof err, d, dl);
            natsMsg_Destroy(m);
            break;
        }
        long c = scan_msg_ids(d, dl, &last);
        natsMsg_Destroy(m);
        if (c == 0)
            break; /* empty before N: reported below */
        if (last <= prev_last && !err[0])
            snprintf(err, sizeof err, "msg_id went backwards: %lld after %lld", last, prev_last);
        prev_last = last;
        got += c;
        char abody[320];
        int alen = snprintf(abody, sizeof abody,
                            "{\"group_name\":\"g\",\"mail_address\":\"%s\",\"msg_id\":%lld}", addr,
                            last);
        natsMsg *am = request(nc, ack_subj, abody, alen, 30000);
        acks++;
        if (!mq9_ok(natsMsg_GetData(am), natsMsg_GetDataLength(am))) {
            errors++;
            if (!err[0])
                excerpt(err, sizeof err, natsMsg_GetData(am), natsMsg_GetDataLength(am));
        }
        natsMsg_Destroy(am);
        lat_add(&lat, now_ns() - t1);
    }
    mark_t b = mark_now();
    double el = (b.t - a.t) / 1e9;
    out_num("rate", el > 0 ? got / el : 0);
    out_int("count", n);
    out_int("drained", got);
    out_int("fetches", fetches);
    out_int("acks", acks);
    out_int("errors", errors);
    out_num("prefill_rate", fill_rate);
    if (err[0])
        out_str("first_error", err);
    out_window(&a, &b);
    out_lat_p(&lat, "round_");
    out_bool("ok", got == n && errors == 0);
    free(lat.v);
    natsConnection_Destroy(nc);
}

static void run_jsfetch(void)
{
    long n = O.count > 0 ? O.count : 10000;
    char subj[160];
    snprintf(subj, sizeof subj, "bench.js.%s", O.stream);
    natsConnection *nc = nats_connect("lg-jsfetch", true);
    jsCtx *js = js_setup_stream(nc, O.stream, subj);
    char err[400] = "";
    double fill_rate = 0;
    if (!prefill(nc, subj, CHECK_JSACK, n, err, sizeof err, &fill_rate))
        die("%s", err);

    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Config.AckPolicy = js_AckAll;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.MaxAckPending = 100000;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, js, subj, "g", NULL, &so, &jerr);
    if (s != NATS_OK)
        die("js_PullSubscribe: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
    bool sync_ack = strcmp(O.ack, "async") != 0;
    lat_t lat = {0};
    long got = 0, fetches = 0, errors = 0;
    int64_t limit = now_ns() + (int64_t)(O.timeout * 1e9);
    mark_t a = mark_now();
    while (got < n && now_ns() < limit) {
        int64_t t1 = now_ns();
        natsMsgList list = {0};
        int want = (n - got) < O.batch ? (int)(n - got) : O.batch;
        s = natsSubscription_Fetch(&list, sub, want, 5000, &jerr);
        fetches++;
        if (s == NATS_TIMEOUT && list.Count == 0)
            break;
        if (s != NATS_OK && list.Count == 0) {
            errors++;
            snprintf(err, sizeof err, "fetch: %s", natsStatus_GetText(s));
            break;
        }
        got += list.Count;
        natsMsg *lastm = list.Msgs[list.Count - 1];
        s = sync_ack ? natsMsg_AckSync(lastm, NULL, &jerr) : natsMsg_Ack(lastm, NULL);
        if (s != NATS_OK) {
            errors++;
            if (!err[0])
                snprintf(err, sizeof err, "ack: %s", natsStatus_GetText(s));
        }
        natsMsgList_Destroy(&list);
        lat_add(&lat, now_ns() - t1);
    }
    mark_t b = mark_now();
    double el = (b.t - a.t) / 1e9;
    out_num("rate", el > 0 ? got / el : 0);
    out_int("count", n);
    out_int("drained", got);
    out_int("fetches", fetches);
    out_int("errors", errors);
    out_str("ack", sync_ack ? "sync" : "async");
    out_num("prefill_rate", fill_rate);
    if (err[0])
        out_str("first_error", err);
    out_window(&a, &b);
    out_lat_p(&lat, "round_");
    out_bool("ok", got == n && errors == 0);
    free(lat.v);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    js_DeleteStream(js, O.stream, NULL, &jerr);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* scenario: ping (one request at a time through libnats, as the fetch  */
/* scenarios send theirs: the round-trip floor of a request)           */
/* ------------------------------------------------------------------ */

static void run_ping(void)
{
    if (!O.subject)
        die("ping needs --subject");
    long n = O.count > 0 ? O.count : 20000;
    natsConnection *nc = nats_connect("lg-ping", true);
    int blen = (int)strlen(O.body);
    for (int i = 0; i < 200; i++) /* warm up */
        natsMsg_Destroy(request(nc, O.subject, O.body, blen, 5000));
    natsMsg *first = request(nc, O.subject, O.body, blen, 5000);
    char reply[200];
    excerpt(reply, sizeof reply, natsMsg_GetData(first), natsMsg_GetDataLength(first));
    natsMsg_Destroy(first);
    lat_t lat = {0};
    mark_t a = mark_now();
    for (long i = 0; i < n; i++) {
        int64_t t1 = now_ns();
        natsMsg_Destroy(request(nc, O.subject, O.body, blen, 5000));
        lat_add(&lat, now_ns() - t1);
    }
    mark_t b = mark_now();
    double el = (b.t - a.t) / 1e9;
    out_num("rate", el > 0 ? n / el : 0);
    out_int("count", n);
    out_str("reply", reply);
    out_window(&a, &b);
    out_lat(&lat);
    out_bool("ok", true);
    free(lat.v);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* registry scenarios                                                  */
/* ------------------------------------------------------------------ */

static void run_register(void)
{
    long n = O.count > 0 ? O.count : 1000;
    natsConnection *nc = nats_connect("lg-register", O.asap != 0);
    req_t r;
    rconn_t *raw = use_raw() ? rc_open() : NULL;
    req_init(&r, raw ? NULL : nc, raw, "$mq9.AI.AGENT.REGISTER", O.inflight, CHECK_MQ9, BODY_CARD, n);
    r.body_base = O.start;
    req_run(&r, 0, O.timeout);
    req_report(&r, "rate");
    rc_close(raw);
    out_str("engine", O.engine);
    out_int("start", O.start);
    out_int("count", n);
    out_bool("ok", r.replies == n && r.errors == 0);
    if (r.replies > 0 && r.errors == r.replies)
        out_bool("unsupported", true);
    req_destroy(&r);
    natsConnection_Destroy(nc);
}

static void run_discover(void)
{
    long n = O.count > 0 ? O.count : 500;
    bool sem = !strcmp(O.mode, "semantic");
    if (!sem && strcmp(O.mode, "text"))
        die("--mode must be text or semantic");
    natsConnection *nc = nats_connect("lg-discover", O.asap != 0);
    req_t r;
    rconn_t *raw = use_raw() ? rc_open() : NULL;
    req_init(&r, raw ? NULL : nc, raw, "$mq9.AI.AGENT.DISCOVER", O.inflight, CHECK_DISCOVER,
             sem ? BODY_QUERY_SEM : BODY_QUERY_TEXT, n);
    r.body_base = O.start;
    req_run(&r, 0, O.timeout);
    req_report(&r, "rate");
    rc_close(raw);
    out_str("engine", O.engine);
    out_str("mode", O.mode);
    out_int("count", n);
    out_num("mean_results", r.replies > r.errors ? (double)r.extra / (r.replies - r.errors) : 0);
    out_bool("ok", r.replies == n && r.errors == 0);
    if (r.replies > 0 && r.errors == r.replies)
        out_bool("unsupported", true);
    req_destroy(&r);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------ */
/* scenario: connections (raw sockets for the idle ones)               */
/* ------------------------------------------------------------------ */

typedef struct {
    int fd;
    uint8_t state; /* 0 connecting, 1 wait INFO, 2 wait PONG, 3 open, 4 failed */
    char tail[8];
} iconn_t;

static iconn_t *g_ic;
static long g_nic;
static int g_ep;
static atomic_int g_idle_stop;
static atomic_long g_idle_pings;

static void parse_hostport(const char *url, char *host, size_t hcap, int *port)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *c = strrchr(p, ':');
    if (!c)
        die("url needs host:port");
    size_t hl = (size_t)(c - p);
    if (hl >= hcap)
        die("host too long");
    memcpy(host, p, hl);
    host[hl] = 0;
    *port = atoi(c + 1);
}

enum { SEEN_PONG = 1, SEEN_PING = 2, SEEN_ERR = 4 };

/* scans incoming bytes for PONG / PING / -ERR, across read boundaries (small tail) */
static int tail_scan(iconn_t *c, const char *buf, ssize_t n)
{
    char tmp[8 + 4096];
    size_t tl = strnlen(c->tail, sizeof c->tail);
    size_t m = (size_t)n > 4096 ? 4096 : (size_t)n;
    memcpy(tmp, c->tail, tl);
    memcpy(tmp + tl, buf + (n - (ssize_t)m), m);
    int hit = 0;
    if (memmem(tmp, tl + m, "PONG", 4)) hit |= SEEN_PONG;
    if (memmem(tmp, tl + m, "PING", 4)) hit |= SEEN_PING;
    if (memmem(tmp, tl + m, "-ERR", 4)) hit |= SEEN_ERR;
    size_t keep = tl + m < 7 ? tl + m : 7;
    memcpy(c->tail, tmp + tl + m - keep, keep);
    c->tail[keep] = 0;
    return hit;
}

static void idle_handle(iconn_t *c, long idx, uint32_t ev)
{
    char buf[8192];
    if (c->state == 0) {
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e != 0) {
            c->state = 4;
            return;
        }
        c->state = 1;
        struct epoll_event ee = {.events = EPOLLIN, .data.u64 = (uint64_t)idx};
        epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ee);
        return;
    }
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            c->state = 4;
            epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
            return;
        }
        if (n < 0)
            return;
        if (c->state == 1 && memchr(buf, '\n', (size_t)n)) {
            char hs[256];
            int hl = snprintf(hs, sizeof hs,
                              "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"c-raw\","
                              "\"version\":\"0\",\"protocol\":1}\r\nSUB _INBOX.idle%ld.* 1\r\n"
                              "PING\r\n",
                              idx);
            if (write(c->fd, hs, (size_t)hl) != hl) {
                c->state = 4;
                return;
            }
            c->state = 2;
            c->tail[0] = 0;
            continue;
        }
        if (c->state == 2) {
            int seen = tail_scan(c, buf, n);
            if (seen & SEEN_ERR)
                c->state = 4;
            else if (seen & SEEN_PONG) {
                c->state = 3;
                c->tail[0] = 0;
            }
            continue;
        }
        if (c->state == 3) {
            if (tail_scan(c, buf, n) & SEEN_PING) {
                c->tail[0] = 0;
                atomic_fetch_add(&g_idle_pings, 1);
                if (write(c->fd, "PONG\r\n", 6) != 6)
                    c->state = 4;
            }
        }
    }
}

static void *idle_thread(void *arg)
{
    (void)arg;
    struct epoll_event evs[256];
    while (!atomic_load(&g_idle_stop)) {
        int n = epoll_wait(g_ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            long idx = (long)evs[i].data.u64;
            idle_handle(&g_ic[idx], idx, evs[i].events);
        }
    }
    return NULL;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* Opens n idle connections in this process (g_ic[0..n)); the source address of connection i is
   127.0.0.(1 + (first + i) % 254) so that every process spreads over the same addresses. */
static void open_idle(const struct sockaddr_in *dst, long first, long n, long *opened_out,
                      long *failed_out)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)n + 64 > rl.rlim_cur)
        die("%ld connections in one process exceed RLIMIT_NOFILE %ld (minus 64 spare): use --procs",
            n, (long)rl.rlim_cur);
    g_ic = calloc((size_t)n, sizeof(iconn_t));
    g_nic = n;
    g_ep = epoll_create1(0);
    long started = 0, opened = 0, failed = 0;
    int64_t limit = now_ns() + (int64_t)(O.timeout * 1e9);
    struct epoll_event evs[512];
    while ((opened + failed) < n && now_ns() < limit) {
        /* keep at most `parallel` handshakes in progress */
        while (started < n && started - opened - failed < O.parallel) {
            iconn_t *c = &g_ic[started];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0)
                die("socket: %s (opened %ld)", strerror(errno), opened);
            int one = 1;
            setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            char src[64];
            snprintf(src, sizeof src, "%s%ld", O.src_prefix, 1 + (first + started) % 254);
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
            if (inet_pton(AF_INET, src, &sa.sin_addr) != 1)
                die("bad source address %s", src);
            if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
                die("bind %s: %s", src, strerror(errno));
            int rc = connect(c->fd, (const struct sockaddr *)dst, sizeof *dst);
            if (rc != 0 && errno != EINPROGRESS) {
                c->state = 4;
                close(c->fd);
                c->fd = -1;
                failed++;
                started++;
                continue;
            }
            c->state = 0;
            struct epoll_event ee = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)started};
            epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ee);
            started++;
        }
        int k = epoll_wait(g_ep, evs, 512, 100);
        for (int i = 0; i < k; i++) {
            long idx = (long)evs[i].data.u64;
            iconn_t *c = &g_ic[idx];
            uint8_t before = c->state;
            idle_handle(c, idx, evs[i].events);
            if (before != 3 && c->state == 3)
                opened++;
            if (before != 4 && c->state == 4) {
                failed++;
                if (before == 3)
                    opened--;
            }
        }
    }
    *opened_out = opened;
    *failed_out = failed;
}

static long count_open_idle(void)
{
    long still = 0;
    for (long i = 0; i < g_nic; i++)
        still += g_ic[i].state == 3;
    return still;
}

static void close_idle(void)
{
    for (long i = 0; i < g_nic; i++)
        if (g_ic[i].fd > 0)
            close(g_ic[i].fd);
    close(g_ep);
    free(g_ic);
}

/* --procs P: a helper process holds its share of the idle connections (each process has its own
   RLIMIT_NOFILE).  It waits for one byte on go_fd, opens its share, writes "opened failed\n" to
   res_fd, services the connections (PING/PONG) until stop_fd reaches EOF, then writes the number
   still open and exits.  Forked before the parent starts any libnats thread. */
typedef struct {
    pid_t pid;
    int res_fd;
    long first, n, opened, failed, still_open;
} idle_proc_t;

static void idle_child(const struct sockaddr_in *dst, long first, long n, int go_fd, int res_fd,
                       int stop_fd)
{
    char b;
    if (read(go_fd, &b, 1) != 1)
        _exit(1);
    long opened, failed;
    open_idle(dst, first, n, &opened, &failed);
    dprintf(res_fd, "%ld %ld\n", opened, failed);
    pthread_t th;
    pthread_create(&th, NULL, idle_thread, NULL);
    while (read(stop_fd, &b, 1) > 0)
        ;
    atomic_store(&g_idle_stop, 1);
    pthread_join(th, NULL);
    dprintf(res_fd, "%ld\n", count_open_idle());
    close_idle();
    _exit(0);
}

static long read_line_long(int fd, long *second)
{
    char buf[64];
    size_t n = 0;
    while (n < sizeof buf - 1 && read(fd, buf + n, 1) == 1 && buf[n] != '\n')
        n++;
    buf[n] = 0;
    if (n == 0)
        die("an idle-connection process died");
    char *end;
    long v = strtol(buf, &end, 10);
    if (second)
        *second = strtol(end, NULL, 10);
    return v;
}

/* Idle connections plus one active requester: how much memory the broker needs per connection,
   how fast it accepts them, and what the requester's latency is before and while they are open. */
static void run_connections(void)
{
    long n = O.count > 0 ? O.count : 1000;
    raise_nofile();
    char host[128];
    int port;
    parse_hostport(O.url, host, sizeof host, &port);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1)
        die("connections needs a numeric IPv4 host, got %s", host);

    int nprocs = O.procs;
    long share = n / nprocs;
    idle_proc_t procs[64];
    int go[2], stop[2];
    if (pipe(go) != 0 || pipe(stop) != 0)
        die("pipe: %s", strerror(errno));
    for (int p = 1; p < nprocs; p++) {
        int res[2];
        if (pipe(res) != 0)
            die("pipe: %s", strerror(errno));
        procs[p].first = share * p;
        procs[p].n = p == nprocs - 1 ? n - share * p : share;
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            close(go[1]);
            close(stop[1]);
            close(res[0]);
            idle_child(&dst, procs[p].first, procs[p].n, go[0], res[1], stop[0]);
        }
        close(res[1]);
        procs[p].pid = pid;
        procs[p].res_fd = res[0];
    }
    close(go[0]);
    close(stop[0]);
    long mine = nprocs == 1 ? n : share;

    /* the active client, measured on the idle broker first */
    responder_t rs;
    responder_start(&rs);
    natsConnection *nc = nats_connect("lg-active", O.asap != 0);
    req_t r0;
    req_init(&r0, nc, NULL, rs.subject, 1, CHECK_ECHO, BODY_FIXED, 0);
    req_run(&r0, O.warmup, O.seconds);

    long rss0 = broker_rss_kb(O.broker_pid);
    int64_t t0 = now_ns();
    for (int p = 1; p < nprocs; p++)
        if (write(go[1], "g", 1) != 1)
            die("write: %s", strerror(errno));
    long opened, failed;
    open_idle(&dst, 0, mine, &opened, &failed);
    for (int p = 1; p < nprocs; p++) {
        procs[p].opened = read_line_long(procs[p].res_fd, &procs[p].failed);
        opened += procs[p].opened;
        failed += procs[p].failed;
    }
    int64_t t1 = now_ns();
    long rss1 = broker_rss_kb(O.broker_pid);

    /* keep the idle connections serviced (answer server PINGs) while measuring */
    pthread_t th;
    pthread_create(&th, NULL, idle_thread, NULL);
    req_t r;
    req_init(&r, nc, NULL, rs.subject, 1, CHECK_ECHO, BODY_FIXED, 0);
    req_run(&r, O.warmup, O.seconds);

    close(stop[1]);
    long still_open = count_open_idle();
    for (int p = 1; p < nprocs; p++) {
        still_open += read_line_long(procs[p].res_fd, NULL);
        waitpid(procs[p].pid, NULL, 0);
    }
    out_int("count", n);
    out_int("procs", nprocs);
    out_int("opened", opened);
    out_int("failed", failed);
    out_int("still_open", still_open);
    out_num("open_s", (t1 - t0) / 1e9);
    out_num("open_rate", (t1 - t0) > 0 ? opened / ((t1 - t0) / 1e9) : 0);
    out_int("broker_rss_kb_before", rss0);
    out_int("broker_rss_kb_after", rss1);
    if (rss0 > 0 && rss1 > 0 && opened > 0)
        out_num("broker_kb_per_conn", (double)(rss1 - rss0) / opened);
    out_lat_p(&r0.lat, "idle_");
    req_report(&r, "rr_rate");
    out_bool("ok", opened == n && still_open == n && r.win_replies > 0);
    req_destroy(&r0);
    req_destroy(&r);
    natsConnection_Destroy(nc);
    responder_stop(&rs);
    atomic_store(&g_idle_stop, 1);
    pthread_join(th, NULL);
    close_idle();
    close(go[1]);
}

/* ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen SCENARIO [--option value ...]\n"
            "scenarios: pubsub reqrep mq9send jspub mq9fetch jsfetch ping register discover "
            "connections card query\n");
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    g_scenario = argv[1];
    if (!strcmp(g_scenario, "card") && argc >= 3) {
        char b[1024];
        make_card(atol(argv[2]), b, sizeof b);
        puts(b);
        return 0;
    }
    if (!strcmp(g_scenario, "query") && argc >= 4) {
        char b[1024];
        make_query(atol(argv[2]), !strcmp(argv[3], "semantic"), b, sizeof b);
        puts(b);
        return 0;
    }
    parse_opts(argc, argv);
    make_payload(O.size);
    check_nats(nats_Open(-1), "nats_Open");
    out_str("scenario", g_scenario);
    out_str("url", O.url);
    if (!strcmp(g_scenario, "pubsub")) run_pubsub();
    else if (!strcmp(g_scenario, "reqrep")) run_reqrep();
    else if (!strcmp(g_scenario, "mq9send")) run_mq9send();
    else if (!strcmp(g_scenario, "jspub")) run_jspub();
    else if (!strcmp(g_scenario, "mq9fetch")) run_mq9fetch();
    else if (!strcmp(g_scenario, "jsfetch")) run_jsfetch();
    else if (!strcmp(g_scenario, "ping")) run_ping();
    else if (!strcmp(g_scenario, "register")) run_register();
    else if (!strcmp(g_scenario, "discover")) run_discover();
    else if (!strcmp(g_scenario, "connections")) run_connections();
    else die("unknown scenario %s", g_scenario);
    out_finish();
    nats_CloseAndWait(2000);
    return 0;
}
