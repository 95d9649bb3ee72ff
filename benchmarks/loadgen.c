/*
 * Load generator for the benchmarks: puts TCP sockets into the network namespace it runs
 * in (run it under `ip netns exec`), fast enough to hold a million TIME-WAIT sockets
 * within their 60 s lifetime (TCP_TIMEWAIT_LEN). Loopback only.
 *
 *   loadgen CONNECTIONS ESTABLISHED SRC_FIRST SRC_COUNT DST_PREFIX DST_FIRST DST_COUNT
 *           PORT_FIRST PORT_COUNT
 *
 * Buckets are every (127.0.0.SRC, DST_PREFIX.DST, PORT) combination; connection i uses
 * bucket i % buckets. Even-numbered connections are closed by the client first (outbound
 * TIME-WAIT, on the client's ephemeral port), odd ones by the server first (inbound
 * TIME-WAIT, on the listener's port). The last ESTABLISHED connections stay open. Prints
 * "ready" and then sleeps until killed, keeping listeners and ESTABLISHED sockets alive.
 *
 *   loadgen distinct out|in CONNECTIONS SECOND_OCTET PORT
 *
 * One bucket per connection. out: one listener on 0.0.0.0:PORT; connection i goes from
 * 127.0.0.1 to its own destination 127.SECOND_OCTET+(i>>16).(i>>8&255).(i&255) and the
 * client closes first (outbound TIME-WAIT). in: one listener on 127.0.0.1:PORT;
 * connection i comes from its own source address (bound with IP_BIND_ADDRESS_NO_PORT)
 * and the server closes first (inbound TIME-WAIT).
 *
 *   loadgen fail RATE SECONDS PORT
 *
 * Failed connects for the connect-failure counter's benchmark: the namespace's port range
 * must hold exactly one port (ip_local_port_range "P P"); one connection from it to
 * 127.0.0.1:PORT takes it, then RATE connect()s a second toward the same destination fail
 * with EADDRNOTAVAIL, each socket closed at once (one destroy event each). Prints the
 * failures made and the seconds taken.
 *
 *   loadgen churn RATE SECONDS PORT DESTINATIONS
 *
 * Connection churn for the socket-destroy event benchmark: RATE connections a second for
 * SECONDS, paced every millisecond, from 127.0.0.1 to 127.0.1.1 .. 127.0.1.DESTINATIONS
 * on PORT (one wildcard listener); each is accepted, then closed by the client, then by
 * the server (two full sockets destroyed, two events). Set the namespace's
 * tcp_max_tw_buckets low so that TIME-WAIT does not exhaust the ports. Prints the
 * connections made and the seconds taken, then exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static void die(const char *what) {
    perror(what);
    exit(1);
}

static struct sockaddr_in address(const char *ip, int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) die(ip);
    return sa;
}

static void wait_eof(int fd) {
    char byte;
    while (recv(fd, &byte, 1, 0) > 0) {
    }
}

/* `first` closes, so its end goes to TIME-WAIT; `second` closes once it has read the FIN. */
static void close_in_order(int first, int second) {
    close(first);
    wait_eof(second);
    close(second);
}

/* Tell the harness the sockets are in place, then keep them until killed. */
static int ready_and_wait(void) {
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}

static int distinct(const char *direction, long connections, int second_octet, int port) {
    int out = strcmp(direction, "out") == 0, one = 1;
    struct rlimit files = {1 << 20, 1 << 20};
    setrlimit(RLIMIT_NOFILE, &files);
    struct sockaddr_in listen_sa = address(out ? "0.0.0.0" : "127.0.0.1", port);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&listen_sa, sizeof listen_sa)) die("bind listener");
    if (listen(listener, 4096)) die("listen");
    char ip[64];
    for (long i = 0; i < connections; i++) {
        snprintf(ip, sizeof ip, "127.%ld.%ld.%ld", second_octet + (i >> 16), (i >> 8) & 255,
                 i & 255);
        struct sockaddr_in remote = out ? address(ip, port) : address("127.0.0.1", port);
        int client = socket(AF_INET, SOCK_STREAM, 0);
        if (client < 0) die("socket");
        if (!out) {
            struct sockaddr_in source = address(ip, 0);
            setsockopt(client, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (bind(client, (struct sockaddr *)&source, sizeof source)) die("bind client");
        }
        if (connect(client, (struct sockaddr *)&remote, sizeof remote)) {
            fprintf(stderr, "connect %ld: %s\n", i, strerror(errno));
            return 1;
        }
        int server = accept(listener, NULL, NULL);
        if (server < 0) die("accept");
        close_in_order(out ? client : server, out ? server : client);
    }
    return ready_and_wait();
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Calls one(state, n) RATE times a second for SECONDS (checked every 0.2 ms), then prints
 * how many calls were made and the seconds taken. A non-zero return of one() stops it. */
static int paced(long rate, double seconds, int (*one)(void *, long), void *state) {
    double start = now_seconds(), end = start + seconds;
    long made = 0;
    for (;;) {
        double t = now_seconds();
        if (t >= end) break;
        long due = (long)((t - start) * rate);
        if (made >= due) {
            struct timespec pause_ts = {0, 200000}; /* 0.2 ms */
            nanosleep(&pause_ts, NULL);
            continue;
        }
        for (; made < due; made++)
            if (one(state, made)) return 1;
    }
    printf("%ld %.3f\n", made, now_seconds() - start);
    return 0;
}

struct churn_state {
    int listener;
    struct sockaddr_in *remote;
    int destinations;
};

static int churn_one(void *opaque, long n) {
    struct churn_state *s = opaque;
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0) die("socket");
    if (connect(client, (struct sockaddr *)&s->remote[n % s->destinations], sizeof s->remote[0])) {
        fprintf(stderr, "connect %ld: %s\n", n, strerror(errno));
        return 1;
    }
    int server = accept(s->listener, NULL, NULL);
    if (server < 0) die("accept");
    close(client);
    close(server);
    return 0;
}

static int churn(long rate, double seconds, int port, int destinations) {
    int one = 1;
    struct sockaddr_in listen_sa = address("0.0.0.0", port);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&listen_sa, sizeof listen_sa)) die("bind listener");
    if (listen(listener, 4096)) die("listen");
    struct sockaddr_in *remote = calloc(destinations, sizeof(struct sockaddr_in));
    char ip[64];
    for (int d = 0; d < destinations; d++) {
        snprintf(ip, sizeof ip, "127.0.1.%d", 1 + d);
        remote[d] = address(ip, port);
    }
    struct churn_state state = {listener, remote, destinations};
    return paced(rate, seconds, churn_one, &state);
}

static int fail_one(void *opaque, long n) {
    struct sockaddr_in *sa = opaque;
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0) die("socket");
    if (connect(client, (struct sockaddr *)sa, sizeof *sa) == 0 || errno != EADDRNOTAVAIL) {
        fprintf(stderr, "connect %ld did not fail with EADDRNOTAVAIL: %s\n", n, strerror(errno));
        return 1;
    }
    close(client);
    return 0;
}

static int fail(long rate, double seconds, int port) {
    int one = 1;
    struct sockaddr_in sa = address("127.0.0.1", port);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&sa, sizeof sa)) die("bind listener");
    if (listen(listener, 16)) die("listen");
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(holder, (struct sockaddr *)&sa, sizeof sa)) die("connect the holder");
    int status = paced(rate, seconds, fail_one, &sa);
    close(holder);
    return status;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "fail") == 0)
        return fail(atol(argv[2]), atof(argv[3]), atoi(argv[4]));
    if (argc == 6 && strcmp(argv[1], "churn") == 0)
        return churn(atol(argv[2]), atof(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc == 6 && strcmp(argv[1], "distinct") == 0)
        return distinct(argv[2], atol(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc != 10) {
        fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
        return 2;
    }
    long connections = atol(argv[1]), established = atol(argv[2]);
    int src_first = atoi(argv[3]), src_count = atoi(argv[4]);
    const char *dst_prefix = argv[5];
    int dst_first = atoi(argv[6]), dst_count = atoi(argv[7]);
    int port_first = atoi(argv[8]), port_count = atoi(argv[9]);
    int listeners = dst_count * port_count, buckets = src_count * listeners;

    struct rlimit files = {1 << 20, 1 << 20};
    setrlimit(RLIMIT_NOFILE, &files);

    int *listen_fd = calloc(listeners, sizeof(int));
    struct sockaddr_in *listen_sa = calloc(listeners, sizeof(struct sockaddr_in));
    struct sockaddr_in *src_sa = calloc(src_count, sizeof(struct sockaddr_in));
    char ip[64];
    for (int s = 0; s < src_count; s++) {
        snprintf(ip, sizeof ip, "127.0.0.%d", src_first + s);
        src_sa[s] = address(ip, 0);
    }
    for (int d = 0; d < dst_count; d++) {
        for (int p = 0; p < port_count; p++) {
            int k = d * port_count + p, one = 1;
            snprintf(ip, sizeof ip, "%s.%d", dst_prefix, dst_first + d);
            listen_sa[k] = address(ip, port_first + p);
            listen_fd[k] = socket(AF_INET, SOCK_STREAM, 0);
            setsockopt(listen_fd[k], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(listen_fd[k], (struct sockaddr *)&listen_sa[k], sizeof listen_sa[k]))
                die("bind listener");
            if (listen(listen_fd[k], 4096)) die("listen");
        }
    }
    for (long i = 0; i < connections; i++) {
        int b = (int)(i % buckets), s = b / listeners, k = b % listeners, one = 1;
        int client = socket(AF_INET, SOCK_STREAM, 0);
        if (client < 0) die("socket");
        setsockopt(client, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(client, (struct sockaddr *)&src_sa[s], sizeof src_sa[s])) die("bind client");
        if (connect(client, (struct sockaddr *)&listen_sa[k], sizeof listen_sa[k])) {
            fprintf(stderr, "connect %ld: %s\n", i, strerror(errno));
            return 1;
        }
        int server = accept(listen_fd[k], NULL, NULL);
        if (server < 0) die("accept");
        if (i >= connections - established) continue; /* keep both ends ESTABLISHED */
        if (i % 2 == 0)
            close_in_order(client, server);
        else
            close_in_order(server, client);
    }
    return ready_and_wait();
}
