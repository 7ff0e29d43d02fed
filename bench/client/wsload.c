/*
 * wsload: a small, cheap WebSocket load client for the benchmark harness.
 *
 * Opens N WebSocket connections (plain or TLS) to one server, subscribes each to channel(s)
 * (Pusher protocol or nchan), then counts received messages carrying a "@@T<ns>@@" marker and
 * keeps a latency histogram until told to quit on stdin. See README.md for the CLI and protocol.
 *
 * Single-threaded, level-triggered epoll; no allocation per received message (per-connection
 * buffers grow on demand and are kept); frames are parsed in place in the read buffer.
 *
 * Build: cc -O2 -Wall -Wextra -o wsload wsload.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* ---------------------------------------------------------------------------------------- */
/* Tunables                                                                                 */

#define RBUF_INIT (8 * 1024)           /* initial per-connection read buffer */
#define RBUF_MIN_FREE 512              /* compact/grow when less free space than this */
#define MAX_FRAME ((uint64_t)1 << 30)  /* refuse frames larger than 1 GiB */
#define MAX_HTTP_HEADER (16 * 1024)
#define MARKER_WINDOW 256              /* marker searched in first/last 256 bytes only */
#define HIST_BUCKET_NS 10000ULL        /* 10 us */
#define HIST_BUCKETS 2000000           /* 10 us x 2e6 = 20 s; last bucket takes overflow */
#define MAX_EVENTS 1024

enum { MODE_PUSHER = 0, MODE_NCHAN = 1 };

enum {
    S_IDLE = 0,    /* not started */
    S_TCP,         /* non-blocking connect in progress */
    S_TLS,         /* TLS handshake */
    S_HTTP,        /* upgrade request sent, waiting for the 101 response */
    S_WAIT_EST,    /* pusher: upgraded, waiting for the first frame */
    S_SUBSCRIBING, /* pusher: subscribe frames sent, waiting for the acks */
    S_OPEN,        /* subscribed */
    S_DEAD,
};

struct conn {
    int fd;
    uint32_t idx;
    uint32_t ev;      /* events currently registered with epoll */
    uint8_t state;
    uint8_t subscribed;
    uint8_t frag_op;  /* opcode of the fragmented message in progress, 0 if none */
    uint8_t read_wants_write; /* TLS: SSL_read returned WANT_WRITE */
    uint8_t write_wants_read; /* TLS: SSL_write returned WANT_READ */
    uint16_t close_rcvd;      /* close code received from the server, 0 if none */
    uint16_t nsubs;   /* distinct channels of this connection */
    uint16_t acked;   /* pusher subscription_succeeded frames received */
    SSL *ssl;
    char *rbuf;
    size_t rcap, rpos, rlen, need; /* need: total size of the incomplete frame at rpos, 0 if unknown */
    char *wbuf;
    size_t wcap, wpos, wlen;
    char *fbuf;       /* fragmented message reassembly (rare) */
    size_t fcap, flen;
    uint64_t deliveries;
};

/* ---------------------------------------------------------------------------------------- */
/* Configuration and global state                                                           */

static const char *opt_host = "127.0.0.1";
static const char *opt_port = NULL;
static long opt_conns = 0;
static int opt_tls = 0;
static const char *opt_sni = NULL;
static const char *opt_cafile = NULL;
static int opt_mode = MODE_PUSHER;
static const char *opt_path = NULL;
static const char *opt_path_template = NULL;
static long opt_channels = 1;
static const char *opt_prefix = "ch";
static long opt_subs_per_conn = 1;
static long opt_connect_batch = 256;
static double opt_connect_timeout = 60.0;

static int epfd = -1;
static SSL_CTX *ssl_ctx = NULL;
static struct sockaddr_storage srv_addr;
static socklen_t srv_addrlen;
static char host_header[512];

static struct conn *conns = NULL;
static long next_to_start = 0;   /* index of the next connection to open */
static long in_setup = 0;        /* started, neither subscribed nor dead */
static long n_subscribed = 0;    /* reached the subscribed state */
static long n_setup_failed = 0;  /* died before being subscribed */
static long n_closed = 0;        /* died after the 101 upgrade */
static long n_failed = 0;        /* died before the 101 upgrade */
static char first_error[256] = "";
static int setup_reported = 0;
static uint64_t t_start_ns = 0;

static uint64_t deliveries = 0;
static uint64_t delivery_bytes = 0;
static uint64_t lat_count = 0;
static uint64_t lat_max_ns = 0;
static uint64_t *hist = NULL;
static uint32_t close_codes[65536];

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static int stdin_tag; /* address used as the epoll tag of stdin */

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("wsload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t rng_next(void) {
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("out of memory (%zu bytes)", n);
    return q;
}

/* Append s to out as JSON string content (without the quotes). */
static void json_escape(FILE *out, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
        else if (ch < 0x20) fprintf(out, "\\u%04x", ch);
        else fputc(ch, out);
    }
}

/* Escape into a buffer (setup-time only). Returns length written (truncates). */
static size_t json_escape_buf(char *dst, size_t cap, const char *s) {
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { dst[n++] = '\\'; dst[n++] = (char)ch; }
        else if (ch < 0x20) n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", ch);
        else dst[n++] = (char)ch;
    }
    dst[n] = 0;
    return n;
}

static void set_first_error(const char *fmt, ...) {
    if (first_error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

static void set_events(struct conn *c, uint32_t ev) {
    if (c->ev == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl MOD: %s", strerror(errno));
    c->ev = ev;
}

/* Channel j (0..M-1) of connection i; returns 0 when it duplicates an earlier j (M > K). */
static int channel_of(uint32_t i, long j, uint64_t *out) {
    uint64_t m = (uint64_t)opt_subs_per_conn, k = (uint64_t)opt_channels;
    uint64_t ch = ((uint64_t)i * m + (uint64_t)j) % k;
    for (long p = 0; p < j; p++)
        if (((uint64_t)i * m + (uint64_t)p) % k == ch) return 0;
    *out = ch;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Connection lifecycle                                                                     */

static void conn_setup_done(struct conn *c, int ok) {
    if (c->subscribed) return;
    in_setup--;
    if (ok) {
        c->subscribed = 1;
        n_subscribed++;
    } else {
        c->subscribed = 2; /* never subscribed */
        n_setup_failed++;
    }
}

/* End a connection. code: WebSocket close code (after the upgrade) or 0 (setup failure). */
static void conn_kill(struct conn *c, int code, const char *why) {
    if (c->state == S_DEAD) return;
    if (c->close_rcvd) code = c->close_rcvd; /* echoing the close failed: keep the server's code */
    if (c->state >= S_WAIT_EST) {
        n_closed++;
        close_codes[code & 0xffff]++;
        if (!c->subscribed) set_first_error("connection %u closed during subscribe: code %d", c->idx, code);
    } else {
        n_failed++;
        set_first_error("connection %u: %s", c->idx, why ? why : "failed");
    }
    conn_setup_done(c, 0);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = S_DEAD;
    free(c->rbuf);
    free(c->wbuf);
    free(c->fbuf);
    c->rbuf = c->wbuf = c->fbuf = NULL;
    c->rcap = c->rpos = c->rlen = c->need = c->wcap = c->wpos = c->wlen = c->fcap = c->flen = 0;
}

static void tls_error_string(struct conn *c, char *buf, size_t cap, int err) {
    unsigned long e = ERR_get_error();
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(buf, cap, "TLS handshake: certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (e)
        snprintf(buf, cap, "TLS handshake: %s", ERR_error_string(e, NULL));
    else if (err == SSL_ERROR_SYSCALL)
        snprintf(buf, cap, "TLS handshake: %s", errno ? strerror(errno) : "connection closed");
    else
        snprintf(buf, cap, "TLS handshake: error %d", err);
    ERR_clear_error();
}

/* Write pending output. Returns -1 when the connection died. */
static int conn_flush(struct conn *c) {
    while (c->wpos < c->wlen) {
        size_t len = c->wlen - c->wpos;
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_write(c->ssl, c->wbuf + c->wpos, len > INT32_MAX ? INT32_MAX : (int)len);
            if (r > 0) {
                n = r;
            } else {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE) break;
                if (e == SSL_ERROR_WANT_READ) { /* retried after the next read */
                    c->write_wants_read = 1;
                    break;
                }
                ERR_clear_error();
                conn_kill(c, 1006, "TLS write failed");
                return -1;
            }
        } else {
            n = send(c->fd, c->wbuf + c->wpos, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                char msg[128];
                snprintf(msg, sizeof msg, "send: %s", strerror(errno));
                conn_kill(c, 1006, msg);
                return -1;
            }
        }
        c->wpos += (size_t)n;
    }
    if (c->wpos == c->wlen) c->wpos = c->wlen = 0;
    return 0;
}

/* Events wanted once the transport is up. */
static void conn_update_events(struct conn *c) {
    uint32_t ev = EPOLLIN;
    if ((c->wlen > c->wpos && !c->write_wants_read) || c->read_wants_write) ev |= EPOLLOUT;
    set_events(c, ev);
}

static char *wbuf_reserve(struct conn *c, size_t n) {
    if (c->wlen + n > c->wcap) {
        if (c->wpos > 0) {
            memmove(c->wbuf, c->wbuf + c->wpos, c->wlen - c->wpos);
            c->wlen -= c->wpos;
            c->wpos = 0;
        }
        if (c->wlen + n > c->wcap) {
            size_t cap = c->wcap ? c->wcap : 512;
            while (cap < c->wlen + n) cap *= 2;
            c->wbuf = xrealloc(c->wbuf, cap);
            c->wcap = cap;
        }
    }
    return c->wbuf + c->wlen;
}

/* Queue one masked client frame (FIN set). */
static void send_frame(struct conn *c, int opcode, const char *payload, size_t len) {
    char *p = wbuf_reserve(c, len + 14);
    size_t h = 0;
    p[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        p[h++] = (char)(0x80 | len);
    } else if (len < 65536) {
        p[h++] = (char)(0x80 | 126);
        p[h++] = (char)(len >> 8);
        p[h++] = (char)len;
    } else {
        p[h++] = (char)(0x80 | 127);
        for (int i = 7; i >= 0; i--) p[h++] = (char)((uint64_t)len >> (8 * i));
    }
    uint32_t m32 = (uint32_t)rng_next();
    unsigned char mask[4];
    memcpy(mask, &m32, 4);
    memcpy(p + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) p[h + i] = (char)(payload[i] ^ mask[i & 3]);
    c->wlen += h + len;
}

static void send_upgrade(struct conn *c) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char key[18];
    uint64_t a = rng_next(), b = rng_next();
    memcpy(key, &a, 8);
    memcpy(key + 8, &b, 8);
    key[16] = key[17] = 0;
    char k64[25];
    int o = 0;
    for (int i = 0; i < 18; i += 3) {
        uint32_t v = ((uint32_t)key[i] << 16) | ((uint32_t)key[i + 1] << 8) | key[i + 2];
        k64[o++] = b64[(v >> 18) & 63];
        k64[o++] = b64[(v >> 12) & 63];
        k64[o++] = b64[(v >> 6) & 63];
        k64[o++] = b64[v & 63];
    }
    k64[22] = k64[23] = '=';
    k64[24] = 0;

    char path[2048];
    if (opt_mode == MODE_PUSHER) {
        snprintf(path, sizeof path, "%s", opt_path);
    } else {
        /* Replace every "%s" of the template with the channel name. */
        uint64_t ch = 0;
        channel_of(c->idx, 0, &ch);
        char name[512];
        snprintf(name, sizeof name, "%s%llu", opt_prefix, (unsigned long long)ch);
        size_t n = 0;
        for (const char *t = opt_path_template; *t && n + 1 < sizeof path;) {
            if (t[0] == '%' && t[1] == 's') {
                n += (size_t)snprintf(path + n, sizeof path - n, "%s", name);
                if (n >= sizeof path) n = sizeof path - 1;
                t += 2;
            } else {
                path[n++] = *t++;
            }
        }
        path[n] = 0;
    }
    char req[4096];
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\n"
                       "Host: %s\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "\r\n",
                       path, host_header, k64);
    if (len < 0 || (size_t)len >= sizeof req) die("request too long");
    memcpy(wbuf_reserve(c, (size_t)len), req, (size_t)len);
    c->wlen += (size_t)len;
    c->state = S_HTTP;
    if (!c->rbuf) {
        c->rbuf = xrealloc(NULL, RBUF_INIT);
        c->rcap = RBUF_INIT;
    }
    if (conn_flush(c) < 0) return;
    conn_update_events(c);
}

static void send_subscribes(struct conn *c) {
    char name[512], esc[1100], msg[1300];
    for (long j = 0; j < opt_subs_per_conn; j++) {
        uint64_t ch;
        if (!channel_of(c->idx, j, &ch)) continue;
        snprintf(name, sizeof name, "%s%llu", opt_prefix, (unsigned long long)ch);
        json_escape_buf(esc, sizeof esc, name);
        int n = snprintf(msg, sizeof msg, "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"%s\"}}", esc);
        send_frame(c, 1, msg, (size_t)n);
    }
}

static void conn_start(struct conn *c) {
    in_setup++;
    c->fd = socket(srv_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "socket: %s", strerror(errno));
        c->state = S_TCP;
        conn_kill(c, 0, msg);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = S_TCP;
    if (connect(c->fd, (struct sockaddr *)&srv_addr, srv_addrlen) < 0 && errno != EINPROGRESS) {
        char msg[128];
        snprintf(msg, sizeof msg, "connect: %s", strerror(errno));
        conn_kill(c, 0, msg);
        return;
    }
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl ADD: %s", strerror(errno));
    c->ev = EPOLLOUT;
}

static void tls_step(struct conn *c) {
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        send_upgrade(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        set_events(c, EPOLLIN);
    } else if (e == SSL_ERROR_WANT_WRITE) {
        set_events(c, EPOLLOUT);
    } else {
        char msg[256];
        tls_error_string(c, msg, sizeof msg, e);
        conn_kill(c, 0, msg);
    }
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0) err = errno;
    if (err) {
        char msg[128];
        snprintf(msg, sizeof msg, "connect: %s", strerror(err));
        conn_kill(c, 0, msg);
        return;
    }
    if (!opt_tls) {
        send_upgrade(c);
        return;
    }
    c->ssl = SSL_new(ssl_ctx);
    if (!c->ssl) die("SSL_new failed");
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_read_ahead(c->ssl, 1);
    const char *name = opt_sni ? opt_sni : opt_host;
    struct in6_addr tmp;
    int is_ip = inet_pton(AF_INET, name, &tmp) == 1 || inet_pton(AF_INET6, name, &tmp) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(c->ssl, name);
    if (opt_cafile) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (is_ip) X509_VERIFY_PARAM_set1_ip_asc(vp, name);
        else SSL_set1_host(c->ssl, name);
    }
    c->state = S_TLS;
    tls_step(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Message handling                                                                         */

/* Find "@@T<digits>@@" with the marker starting in [from, to); digits may run past `to`. */
static int scan_marker(const char *p, size_t len, size_t from, size_t to, uint64_t *ts) {
    while (from < to) {
        size_t win = to - from + 2; /* let "@@T" start at to-1 */
        if (from + win > len) win = len - from;
        const char *m = memmem(p + from, win, "@@T", 3);
        if (!m) return 0;
        size_t q = (size_t)(m - p) + 3;
        uint64_t v = 0;
        size_t d = 0;
        while (q < len && d < 20 && p[q] >= '0' && p[q] <= '9') {
            v = v * 10 + (uint64_t)(p[q] - '0');
            q++;
            d++;
        }
        if (d > 0 && q + 2 <= len && p[q] == '@' && p[q + 1] == '@') {
            *ts = v;
            return 1;
        }
        from = (size_t)(m - p) + 1;
    }
    return 0;
}

static int find_marker(const char *p, size_t len, uint64_t *ts) {
    size_t head = len < MARKER_WINDOW ? len : MARKER_WINDOW;
    if (scan_marker(p, len, 0, head, ts)) return 1;
    if (len > MARKER_WINDOW) {
        size_t from = len - MARKER_WINDOW;
        if (from < head) from = head;
        return scan_marker(p, len, from, len, ts);
    }
    return 0;
}

static inline int head_contains(const char *p, size_t len, const char *needle, size_t nlen) {
    size_t win = len < MARKER_WINDOW ? len : MARKER_WINDOW;
    return memmem(p, win, needle, nlen) != NULL;
}

static void on_message(struct conn *c, int opcode, const char *p, size_t len) {
    if (opt_mode == MODE_PUSHER && c->state != S_OPEN) {
        if (c->state == S_WAIT_EST) { /* pusher:connection_established */
            send_subscribes(c);
            c->state = S_SUBSCRIBING;
            return;
        }
        if (c->state == S_SUBSCRIBING &&
            head_contains(p, len, "pusher_internal:subscription_succeeded", 38)) {
            if (++c->acked >= c->nsubs) {
                c->state = S_OPEN;
                conn_setup_done(c, 1);
            }
            return;
        }
    }
    uint64_t ts;
    if (find_marker(p, len, &ts)) {
        uint64_t now = now_ns();
        uint64_t lat = now > ts ? now - ts : 0;
        uint64_t b = lat / HIST_BUCKET_NS;
        if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
        hist[b]++;
        lat_count++;
        if (lat > lat_max_ns) lat_max_ns = lat;
        deliveries++;
        delivery_bytes += len;
        c->deliveries++;
        return;
    }
    if (opt_mode == MODE_PUSHER && opcode == 1 && head_contains(p, len, "pusher:ping", 11)) {
        static const char pong[] = "{\"event\":\"pusher:pong\",\"data\":{}}";
        send_frame(c, 1, pong, sizeof pong - 1);
    }
}

static void frag_append(struct conn *c, const char *p, size_t len) {
    if (c->flen + len > c->fcap) {
        size_t cap = c->fcap ? c->fcap : 4096;
        while (cap < c->flen + len) cap *= 2;
        c->fbuf = xrealloc(c->fbuf, cap);
        c->fcap = cap;
    }
    memcpy(c->fbuf + c->flen, p, len);
    c->flen += len;
}

/* Returns -1 when the connection died. */
static int on_frame(struct conn *c, int opcode, int fin, const char *p, size_t len) {
    switch (opcode) {
    case 0: /* continuation */
        if (!c->frag_op) return 0;
        frag_append(c, p, len);
        if (fin) {
            int op = c->frag_op;
            size_t flen = c->flen;
            c->frag_op = 0;
            c->flen = 0;
            on_message(c, op, c->fbuf, flen); /* fbuf is kept; on_message never frees it */
        }
        return 0;
    case 1:
    case 2:
        if (fin) {
            on_message(c, opcode, p, len);
        } else {
            c->frag_op = (uint8_t)opcode;
            c->flen = 0;
            frag_append(c, p, len);
        }
        return 0;
    case 8: { /* close */
        int code = 1005;
        if (len >= 2) code = ((unsigned char)p[0] << 8) | (unsigned char)p[1];
        c->close_rcvd = (uint16_t)code;
        char body[2] = {(char)(code >> 8), (char)code};
        send_frame(c, 8, body, len >= 2 ? 2 : 0);
        conn_flush(c); /* best effort */
        if (c->state != S_DEAD) conn_kill(c, code, NULL);
        return -1;
    }
    case 9: /* ping */
        send_frame(c, 10, p, len);
        return 0;
    default: /* pong and reserved opcodes */
        return 0;
    }
}

/* Parse whatever is buffered. Returns -1 when the connection died. */
static int conn_process(struct conn *c) {
    if (c->state == S_HTTP) {
        char *e = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!e) {
            if (c->rlen > MAX_HTTP_HEADER) {
                conn_kill(c, 0, "HTTP response header too long");
                return -1;
            }
            return 0;
        }
        if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0 || memcmp(c->rbuf + 9, "101", 3) != 0) {
            char msg[200];
            char *eol = memchr(c->rbuf, '\r', c->rlen);
            int n = eol ? (int)(eol - c->rbuf) : (int)c->rlen;
            snprintf(msg, sizeof msg, "upgrade refused: %.*s", n > 120 ? 120 : n, c->rbuf);
            conn_kill(c, 0, msg);
            return -1;
        }
        c->rpos = (size_t)(e + 4 - c->rbuf);
        if (opt_mode == MODE_PUSHER) {
            c->state = S_WAIT_EST;
        } else {
            c->state = S_OPEN;
            conn_setup_done(c, 1);
        }
    }
    for (;;) {
        size_t avail = c->rlen - c->rpos;
        unsigned char *p = (unsigned char *)c->rbuf + c->rpos;
        if (avail < 2) {
            c->need = 0;
            break;
        }
        int fin = p[0] & 0x80, opcode = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t plen = p[1] & 0x7f;
        /* RSV bits (no extension is negotiated), reserved opcodes, long or fragmented control
         * frames: the stream is corrupt or out of sync. Fail the connection as 1002 so it shows. */
        if ((p[0] & 0x70) || (opcode >= 3 && opcode <= 7) || opcode >= 11 ||
            (opcode >= 8 && (plen > 125 || !fin))) {
            static const char code[2] = {0x03, (char)0xea}; /* 1002 */
            send_frame(c, 8, code, 2);
            conn_flush(c);
            if (c->state != S_DEAD) conn_kill(c, 1002, NULL);
            return -1;
        }
        size_t hdr = 2;
        if (plen == 126) {
            if (avail < 4) { c->need = 0; break; }
            plen = ((uint64_t)p[2] << 8) | p[3];
            hdr = 4;
        } else if (plen == 127) {
            if (avail < 10) { c->need = 0; break; }
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | p[2 + i];
            hdr = 10;
        }
        if (masked) hdr += 4;
        if (plen > MAX_FRAME) {
            conn_kill(c, 1009, NULL);
            return -1;
        }
        size_t total = hdr + (size_t)plen;
        if (avail < total) {
            c->need = total;
            break;
        }
        char *payload = (char *)p + hdr;
        if (masked) {
            const unsigned char *mk = p + hdr - 4;
            for (size_t i = 0; i < plen; i++) payload[i] ^= (char)mk[i & 3];
        }
        c->rpos += total;
        if (on_frame(c, opcode, fin, payload, (size_t)plen) < 0) return -1;
    }
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
        c->need = 0;
    }
    return 0;
}

/* Make room for the next read; compacts or grows only when needed. */
static void rbuf_make_room(struct conn *c) {
    size_t pend = c->rlen - c->rpos;
    if (c->need) {
        if (c->rpos + c->need <= c->rcap) return; /* the frame fits where it is */
        if (c->rpos) {
            memmove(c->rbuf, c->rbuf + c->rpos, pend);
            c->rpos = 0;
            c->rlen = pend;
        }
        if (c->need > c->rcap) {
            size_t cap = c->rcap * 2;
            if (cap < c->need + RBUF_MIN_FREE) cap = c->need + RBUF_MIN_FREE;
            c->rbuf = xrealloc(c->rbuf, cap);
            c->rcap = cap;
        }
        return;
    }
    if (c->rcap - c->rlen >= RBUF_MIN_FREE) return;
    if (c->rpos) {
        memmove(c->rbuf, c->rbuf + c->rpos, pend);
        c->rpos = 0;
        c->rlen = pend;
        if (c->rcap - c->rlen >= RBUF_MIN_FREE) return;
    }
    c->rcap *= 2;
    c->rbuf = xrealloc(c->rbuf, c->rcap);
}

static void conn_read(struct conn *c) {
    for (;;) {
        rbuf_make_room(c);
        size_t space = c->rcap - c->rlen;
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, c->rbuf + c->rlen, space > INT32_MAX ? INT32_MAX : (int)space);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ) break;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->read_wants_write = 1;
                    break;
                }
                ERR_clear_error();
                conn_kill(c, 1006, e == SSL_ERROR_ZERO_RETURN ? "TLS closed" : "TLS read failed");
                return;
            }
            c->read_wants_write = 0;
            c->write_wants_read = 0;
            n = r;
        } else {
            n = recv(c->fd, c->rbuf + c->rlen, space, 0);
            if (n <= 0) {
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (n < 0 && errno == EINTR) continue;
                char msg[128];
                snprintf(msg, sizeof msg, "%s", n == 0 ? "connection closed by peer" : strerror(errno));
                conn_kill(c, 1006, msg);
                return;
            }
        }
        c->rlen += (size_t)n;
        if (conn_process(c) < 0) return;
        /* Level-triggered: a short read means the socket is drained for now. With TLS,
         * records already pulled into OpenSSL's buffer are invisible to epoll: keep going. */
        if ((size_t)n < space && !(c->ssl && SSL_has_pending(c->ssl))) break;
    }
    if (c->wlen > c->wpos && conn_flush(c) < 0) return;
    conn_update_events(c);
}

static void on_conn_event(struct conn *c, uint32_t ev) {
    switch (c->state) {
    case S_DEAD:
    case S_IDLE:
        return;
    case S_TCP:
        on_connected(c);
        return;
    case S_TLS:
        tls_step(c);
        return;
    default:
        if ((ev & EPOLLOUT) && c->read_wants_write) {
            c->read_wants_write = 0;
            conn_read(c);
            if (c->state == S_DEAD) return;
        }
        if ((ev & EPOLLOUT) && c->wlen > c->wpos) {
            if (conn_flush(c) < 0) return;
            conn_update_events(c);
        }
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(c);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Reporting and control                                                                    */

static void print_stats(void) {
    uint64_t r50 = (lat_count * 50 + 99) / 100, r95 = (lat_count * 95 + 99) / 100,
             r99 = (lat_count * 99 + 99) / 100;
    uint64_t p50 = 0, p95 = 0, p99 = 0, cum = 0;
    if (lat_count) {
        int got = 0;
        for (uint64_t b = 0; b < HIST_BUCKETS && got < 3; b++) {
            if (!hist[b]) continue;
            cum += hist[b];
            uint64_t ub = (b + 1) * (HIST_BUCKET_NS / 1000);
            if (!p50 && cum >= r50) { p50 = ub; got++; }
            if (!p95 && cum >= r95) { p95 = ub; got++; }
            if (!p99 && cum >= r99) { p99 = ub; got++; }
        }
    }
    uint64_t mn = UINT64_MAX, mx = 0;
    for (long i = 0; i < opt_conns; i++) {
        uint64_t d = conns[i].deliveries;
        if (d < mn) mn = d;
        if (d > mx) mx = d;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"event\":\"stats\",\"deliveries\":%llu,\"bytes\":%llu,"
           "\"lat_us\":{\"count\":%llu,\"p50\":%llu,\"p95\":%llu,\"p99\":%llu,\"max\":%.1f},"
           "\"min_per_conn\":%llu,\"max_per_conn\":%llu,\"closed\":%ld,\"close_codes\":{",
           (unsigned long long)deliveries, (unsigned long long)delivery_bytes,
           (unsigned long long)lat_count, (unsigned long long)p50, (unsigned long long)p95,
           (unsigned long long)p99, lat_max_ns / 1000.0, (unsigned long long)mn,
           (unsigned long long)mx, n_closed);
    int first = 1;
    for (int code = 0; code < 65536; code++) {
        if (!close_codes[code]) continue;
        printf("%s\"%d\":%u", first ? "" : ",", code, close_codes[code]);
        first = 0;
    }
    printf("},\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"subscribed\":%ld,\"failed\":%ld}\n",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
           n_subscribed, n_failed);
    fflush(stdout);
}

static void do_reset(void) {
    deliveries = delivery_bytes = lat_count = lat_max_ns = 0;
    memset(hist, 0, sizeof(uint64_t) * HIST_BUCKETS);
    for (long i = 0; i < opt_conns; i++) conns[i].deliveries = 0;
    printf("{\"event\":\"reset\"}\n");
    fflush(stdout);
}

static void quit(void) {
    fflush(stdout);
    _exit(0);
}

static void handle_command(char *line) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = 0;
    while (*line == ' ' || *line == '\t') line++;
    if (!strcmp(line, "stats")) print_stats();
    else if (!strcmp(line, "reset")) do_reset();
    else if (!strcmp(line, "quit")) quit();
    else if (*line) {
        printf("{\"event\":\"unknown_command\",\"command\":\"");
        json_escape(stdout, line);
        printf("\"}\n");
        fflush(stdout);
    }
}

static char in_buf[4096];
static size_t in_len = 0;

static void on_stdin(void) {
    ssize_t n = read(0, in_buf + in_len, sizeof in_buf - 1 - in_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        quit();
    }
    if (n == 0) quit();
    in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < in_len; i++) {
        if (in_buf[i] == '\n') {
            in_buf[i] = 0;
            handle_command(in_buf + start);
            start = i + 1;
        }
    }
    memmove(in_buf, in_buf + start, in_len - start);
    in_len -= start;
    if (in_len == sizeof in_buf - 1) in_len = 0; /* overlong line: drop it */
}

static void check_setup(void) {
    if (setup_reported) return;
    if (n_subscribed == opt_conns) {
        printf("{\"event\":\"ready\",\"conns\":%ld,\"connect_s\":%.3f}\n", opt_conns,
               (now_ns() - t_start_ns) / 1e9);
        fflush(stdout);
        setup_reported = 1;
        return;
    }
    int timed_out = now_ns() - t_start_ns >= (uint64_t)(opt_connect_timeout * 1e9);
    int all_done = n_subscribed + n_setup_failed == opt_conns;
    if (!timed_out && !all_done) return;
    char msg[512];
    if (timed_out)
        snprintf(msg, sizeof msg, "connect timeout after %g s: %ld/%ld subscribed, %ld failed%s%s",
                 opt_connect_timeout, n_subscribed, opt_conns, n_setup_failed, first_error[0] ? "; first error: " : "",
                 first_error);
    else
        snprintf(msg, sizeof msg, "%ld of %ld connections failed; first error: %s", n_setup_failed, opt_conns,
                 first_error);
    printf("{\"event\":\"error\",\"message\":\"");
    json_escape(stdout, msg);
    printf("\",\"subscribed\":%ld}\n", n_subscribed);
    fflush(stdout);
    setup_reported = 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Main                                                                                     */

static void usage(FILE *f) {
    fputs("usage: wsload --port P --conns N --mode pusher|nchan (--path PATH | --path-template TMPL)\n"
          "              [--host 127.0.0.1] [--tls] [--sni NAME] [--cafile FILE]\n"
          "              [--channels K] [--prefix ch] [--subs-per-conn M]\n"
          "              [--connect-batch 256] [--connect-timeout 60]\n"
          "stdin commands: stats | reset | quit (EOF = quit)\n",
          f);
}

static long parse_long(const char *s, const char *what, long min) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < min) die("bad %s: %s", what, s);
    return v;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'n'},
        {"tls", no_argument, 0, 't'},
        {"sni", required_argument, 0, 's'},
        {"cafile", required_argument, 0, 'C'},
        {"mode", required_argument, 0, 'm'},
        {"path", required_argument, 0, 'P'},
        {"path-template", required_argument, 0, 'T'},
        {"channels", required_argument, 0, 'k'},
        {"prefix", required_argument, 0, 'x'},
        {"subs-per-conn", required_argument, 0, 'M'},
        {"connect-batch", required_argument, 0, 'b'},
        {"connect-timeout", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'H'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = optarg; break;
        case 'n': opt_conns = parse_long(optarg, "--conns", 1); break;
        case 't': opt_tls = 1; break;
        case 's': opt_sni = optarg; break;
        case 'C': opt_cafile = optarg; break;
        case 'm':
            if (!strcmp(optarg, "pusher")) opt_mode = MODE_PUSHER;
            else if (!strcmp(optarg, "nchan")) opt_mode = MODE_NCHAN;
            else die("bad --mode: %s (pusher|nchan)", optarg);
            break;
        case 'P': opt_path = optarg; break;
        case 'T': opt_path_template = optarg; break;
        case 'k': opt_channels = parse_long(optarg, "--channels", 1); break;
        case 'x': opt_prefix = optarg; break;
        case 'M': opt_subs_per_conn = parse_long(optarg, "--subs-per-conn", 1); break;
        case 'b': opt_connect_batch = parse_long(optarg, "--connect-batch", 1); break;
        case 'o': {
            char *end;
            opt_connect_timeout = strtod(optarg, &end);
            if (*end || end == optarg || opt_connect_timeout <= 0) die("bad --connect-timeout: %s", optarg);
            break;
        }
        case 'H': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) die("unexpected argument: %s", argv[optind]);
    if (!opt_port) die("--port is required");
    if (!opt_conns) die("--conns is required");
    if (opt_mode == MODE_PUSHER && !opt_path) die("pusher mode needs --path");
    if (opt_mode == MODE_NCHAN && !opt_path_template) die("nchan mode needs --path-template");
    if (opt_mode == MODE_NCHAN && opt_subs_per_conn != 1) die("nchan mode requires --subs-per-conn 1");
    if (opt_subs_per_conn > 65535) die("--subs-per-conn too large");
    if (opt_cafile && !opt_tls) die("--cafile needs --tls");

    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) fprintf(stderr, "wsload: setrlimit: %s\n", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)opt_conns + 16 > rl.rlim_cur)
        fprintf(stderr, "wsload: warning: RLIMIT_NOFILE %llu is below --conns %ld\n",
                (unsigned long long)rl.rlim_cur, opt_conns);

    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = now_ns() ^ (uint64_t)getpid() << 32;
    rng_state ^= seed;
    if (!rng_state) rng_state = 1;

    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gr = getaddrinfo(opt_host, opt_port, &hints, &ai);
    if (gr) die("cannot resolve %s:%s: %s", opt_host, opt_port, gai_strerror(gr));
    memcpy(&srv_addr, ai->ai_addr, ai->ai_addrlen);
    srv_addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);

    {
        const char *name = opt_sni ? opt_sni : opt_host;
        long port = atol(opt_port);
        int is_v6 = strchr(name, ':') != NULL;
        if (port == (opt_tls ? 443 : 80))
            snprintf(host_header, sizeof host_header, is_v6 ? "[%s]" : "%s", name);
        else
            snprintf(host_header, sizeof host_header, is_v6 ? "[%s]:%ld" : "%s:%ld", name, port);
    }

    if (opt_tls) {
        ssl_ctx = SSL_CTX_new(TLS_client_method());
        if (!ssl_ctx) die("SSL_CTX_new failed");
        SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (opt_cafile) {
            if (SSL_CTX_load_verify_locations(ssl_ctx, opt_cafile, NULL) != 1)
                die("cannot load --cafile %s: %s", opt_cafile, ERR_error_string(ERR_get_error(), NULL));
            SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER, NULL);
        } else {
            SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
        }
    }

    hist = calloc(HIST_BUCKETS, sizeof(uint64_t));
    conns = calloc((size_t)opt_conns, sizeof(struct conn));
    if (!hist || !conns) die("out of memory");
    for (long i = 0; i < opt_conns; i++) {
        struct conn *c = &conns[i];
        c->fd = -1;
        c->idx = (uint32_t)i;
        uint16_t distinct = 0;
        for (long j = 0; j < opt_subs_per_conn; j++) {
            uint64_t chn;
            if (channel_of(c->idx, j, &chn)) distinct++;
        }
        c->nsubs = distinct;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));
    {
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &stdin_tag};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &e) < 0)
            fprintf(stderr, "wsload: stdin cannot be polled (%s); commands disabled\n", strerror(errno));
    }

    t_start_ns = now_ns();
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        while (next_to_start < opt_conns && in_setup < opt_connect_batch) conn_start(&conns[next_to_start++]);
        check_setup();
        int timeout = -1;
        if (!setup_reported) {
            uint64_t deadline = t_start_ns + (uint64_t)(opt_connect_timeout * 1e9), now = now_ns();
            timeout = now >= deadline ? 0 : (int)((deadline - now) / 1000000 + 1);
        }
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &stdin_tag) on_stdin();
            else on_conn_event(evs[i].data.ptr, evs[i].events);
        }
    }
}
