// bench/media/rtpgen.c: the RTP load of bench/media.sh, the same for every relay measured.
//
// Each call has two directions: the caller side sends to the relay's leg-A address, the gateway side to its
// leg-B address; the relay forwards each packet to the other side. Per call and direction, one 172-byte
// G.711 RTP packet (12-byte header, 160-byte payload) every 20 ms. The payload carries the call number, the
// direction, whether the packet belongs to the measured window, and its send time (CLOCK_REALTIME, ns).
//
// Few sockets, batched system calls: the caller side is K sockets on CALLER_IP:CBASE.., the gateway side K
// sockets on GW_IP:GBASE..; call i uses socket i % K on both sides (that is the address its SDP announced).
// Packets leave in sendmmsg batches (one batch per socket and 1 ms slot: call i sends in slot (i / K) % 20 of
// each 20 ms tick, so the load is spread over the tick as real calls are), and come back through recvmmsg
// with the kernel's receive timestamp (SO_TIMESTAMPNS). Added latency = receive timestamp - send time; it
// excludes the generator's own delays except the time to push one batch (at most BATCH packets).
//
// Phases: WARMUP seconds of traffic not counted in the window; WINDOW seconds measured (the relay's CPU,
// utime+stime of /proc/PID/stat, read at both ends; latencies of the window's packets); 0.5 s of silence to
// let the last packets arrive. Loss counts every packet sent in either phase.
//
// SRTP (MODE srtp; built with -DWITH_SRTP and libsrtp2): the caller side speaks SRTP, AES_CM_128_HMAC_SHA1_80
// (RFC 3711), the gateway side plain RTP, as a Mediation Server bridges them. Each call's caller side protects
// what it sends with the key it offered (CALLER_KEY) and unprotects what comes back with the key the relay
// answered (RELAY_KEY); a packet that fails to unprotect counts in srtp_fail (and is lost). The relay must
// therefore decrypt leg A's packets (the gateway side checks their plain payload) and encrypt towards leg A.
// A packet coming back to the caller side is matched to its call by the relay port it came from (symmetric
// RTP: the relay sends from the port it receives on), before it can be read.
//
// usage: rtpgen PAIRS K CALLER_IP CBASE GW_IP GBASE WARMUP WINDOW RELAY_PID [MODE]
//   PAIRS: one line per call, "A_IP A_PORT B_IP B_PORT" (the relay's address for each side); with MODE srtp,
//   two more columns "CALLER_KEY RELAY_KEY" (SDES inline key||salt, base64, 30 bytes)
//   MODE: rtp (default), srtp, or rtpeq: plain RTP on the wire, but the generator does the SRTP mode's
//   crypto work anyway (protects a copy of each caller-side packet before it is sent, and one of each packet
//   that comes back, with per-call contexts keyed here, and throws the copies away). A relay's CPU per packet
//   depends on how its packets arrive (a busier generator spreads each batch over more time, so the relay
//   sleeps and wakes more often per packet); with rtpeq the plain turn's packets leave and arrive as in the
//   srtp turn, so the difference between the two turns is the relay's own SRTP work.
// Prints one line of key=value pairs.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_SRTP
#include <srtp2/srtp.h>
#endif

#define PKT 172
#define BATCH 64
#define SLOTS 20
#define MAXK 256
#define HIST_US 100000 /* latency histogram: 1 µs buckets up to 100 ms, the rest in the last one */
#define TAG80 10        /* AES_CM_128_HMAC_SHA1_80's authentication tag */
#define KEYSALT 30      /* SDES master key (16) || master salt (14) */

static int64_t clock_ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long relay_ticks(int pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  if (!p) return -1;
  long utime = 0, stime = 0;
  /* after ')': state is field 3; utime is field 14, stime 15 */
  int field = 2;
  for (char *s = p + 1; *s; s++) {
    if (*s == ' ') {
      field++;
      if (field == 14) utime = strtol(s + 1, NULL, 10);
      if (field == 15) { stime = strtol(s + 1, NULL, 10); break; }
    }
  }
  return utime + stime;
}

static int udp_socket(const char *ip, int port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  int big = 16 << 20, one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big)) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big)) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, ip, &a.sin_addr);
  if (bind(fd, (struct sockaddr *)&a, sizeof a)) {
    fprintf(stderr, "rtpgen: bind %s:%d: %s\n", ip, port, strerror(errno));
    exit(1);
  }
  return fd;
}

/* base64 (RFC 4648) of an SDES inline key into out; returns the decoded length or -1 */
static int unbase64(const char *in, unsigned char *out, int cap) {
  int len = 0, bits = 0;
  uint32_t acc = 0;
  for (; *in && *in != '|'; in++) {
    int v;
    char c = *in;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') break;
    else return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (len == cap) return -1;
      out[len++] = (unsigned char)(acc >> bits);
    }
  }
  return len;
}

static void put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

int main(int argc, char **argv) {
  if (argc != 10 && argc != 11) {
    fprintf(stderr, "usage: rtpgen PAIRS K CALLER_IP CBASE GW_IP GBASE WARMUP WINDOW RELAY_PID [rtp|srtp]\n");
    return 2;
  }
  int srtp = argc == 11 && !strcmp(argv[10], "srtp");
  int eq = argc == 11 && !strcmp(argv[10], "rtpeq");
  if (argc == 11 && !srtp && !eq && strcmp(argv[10], "rtp")) { fprintf(stderr, "rtpgen: MODE is rtp, srtp or rtpeq\n"); return 2; }
#ifndef WITH_SRTP
  if (srtp || eq) { fprintf(stderr, "rtpgen: built without SRTP (cc -DWITH_SRTP ... -lsrtp2)\n"); return 2; }
#else
  if ((srtp || eq) && srtp_init() != srtp_err_status_ok) { fprintf(stderr, "rtpgen: srtp_init failed\n"); return 1; }
#endif
  int K = atoi(argv[2]), cbase = atoi(argv[4]), gbase = atoi(argv[6]), pid = atoi(argv[9]);
  double warmup = atof(argv[7]), window = atof(argv[8]);
  if (K < 1 || K > MAXK) { fprintf(stderr, "rtpgen: K must be 1..%d\n", MAXK); return 2; }
  FILE *f = fopen(argv[1], "r");
  if (!f) { perror("rtpgen: pairs"); return 1; }
  int cap = 1024, n = 0;
  struct sockaddr_in(*dst)[2] = malloc(sizeof *dst * cap);
  unsigned char(*keys)[2][KEYSALT] = malloc(sizeof *keys * cap);
  char aip[64], bip[64], line[512], ck[128], rk[128];
  int ap, bp;
  while (fgets(line, sizeof line, f)) {
    int cols = sscanf(line, "%63s %d %63s %d %127s %127s", aip, &ap, bip, &bp, ck, rk);
    if (cols < 4) continue;
    if (n == cap) { cap *= 2; dst = realloc(dst, sizeof *dst * cap); keys = realloc(keys, sizeof *keys * cap); }
    if (srtp && (cols != 6 || unbase64(ck, keys[n][0], KEYSALT) != KEYSALT || unbase64(rk, keys[n][1], KEYSALT) != KEYSALT)) {
      fprintf(stderr, "rtpgen: call %d: SRTP needs two 30-byte base64 keys after the addresses: %s", n, line);
      return 1;
    }
    if (eq)
      for (int w = 0; w < 2; w++)
        for (int b = 0; b < KEYSALT; b++) keys[n][w][b] = (unsigned char)(n * 7 + w * 131 + b * 13);
    for (int d = 0; d < 2; d++) {
      dst[n][d] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(d ? bp : ap)};
      inet_pton(AF_INET, d ? bip : aip, &dst[n][d].sin_addr);
    }
    n++;
  }
  fclose(f);
  if (n == 0) { fprintf(stderr, "rtpgen: no calls\n"); return 1; }

  /* fd[d][k]: direction d sends from side d (0 = caller side, to leg A; 1 = gateway side, to leg B) */
  int fd[2][MAXK];
  int ep = epoll_create1(0);
  for (int d = 0; d < 2; d++)
    for (int k = 0; k < K; k++) {
      fd[d][k] = udp_socket(d ? argv[5] : argv[3], (d ? gbase : cbase) + k);
      struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(d * MAXK + k)};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd[d][k], &ev);
    }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 0xffffffff};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

  /* per-call packets, written in place before each send */
  unsigned char(*pkt)[2][PKT] = malloc(sizeof *pkt * n);
  for (int i = 0; i < n; i++)
    for (int d = 0; d < 2; d++) {
      unsigned char *p = pkt[i][d];
      memset(p, 0xd5, PKT);
      p[0] = 0x80; p[1] = 8;
      put32(p + 8, 0x10000000u + (uint32_t)i * 2 + d); /* SSRC */
      memcpy(p + 12, "MBEN", 4);
      put32(p + 16, (uint32_t)i);
      p[20] = (unsigned char)d;
    }
#ifdef WITH_SRTP
  /* per call: tx protects what the caller side sends, rx unprotects what comes back to it (rtpeq: rx
     protects a throw-away copy of what comes back, the same work as unprotecting it) */
  srtp_t *tx = NULL, *rx = NULL;
  /* the call a packet arriving on the caller side belongs to, by the relay port it came from (+1: 0 = none) */
  int *call_of_port = NULL;
  if (srtp || eq) {
    tx = calloc((size_t)n, sizeof *tx);
    rx = calloc((size_t)n, sizeof *rx);
    call_of_port = calloc(65536, sizeof *call_of_port);
    for (int i = 0; i < n; i++) {
      for (int w = 0; w < 2; w++) {
        srtp_policy_t pol;
        memset(&pol, 0, sizeof pol);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol.rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol.rtcp);
        pol.ssrc.type = w && !eq ? ssrc_any_inbound : ssrc_any_outbound;
        pol.key = keys[i][w];
        pol.window_size = 1024;
        if (srtp_create(w ? &rx[i] : &tx[i], &pol) != srtp_err_status_ok) { fprintf(stderr, "rtpgen: srtp_create failed (call %d)\n", i); return 1; }
      }
      call_of_port[ntohs(dst[i][0].sin_port)] = i + 1;
    }
  }
#endif
  /* what goes out: a copy of pkt, protected in place on the caller side with SRTP (room for the tag) */
  unsigned char(*sbuf)[PKT + 32] = malloc(sizeof *sbuf * BATCH);
  int sidx[BATCH];
  long srtp_fail = 0;
  long *sent = calloc((size_t)n * 2, sizeof(long)), *recvd = calloc((size_t)n * 2, sizeof(long));
  uint32_t *hist = calloc(HIST_US + 1, sizeof(uint32_t));
  long send_fail = 0, misrouted = 0, foreign = 0, win_sent = 0, win_recv = 0, late_slots = 0, batches = 0;
  int64_t max_ns = 0;

  struct mmsghdr smsg[BATCH];
  struct iovec siov[BATCH];
  struct mmsghdr rmsg[BATCH];
  struct iovec riov[BATCH];
  unsigned char rbuf[BATCH][2048];
  char ctl[BATCH][64];
  struct sockaddr_in rsrc[BATCH];

  int64_t t0 = clock_ns(CLOCK_MONOTONIC);
  int64_t warm_end = t0 + (int64_t)(warmup * 1e9), win_end = warm_end + (int64_t)(window * 1e9);
  int64_t stop = win_end + 500000000;
  struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {t0 / 1000000000, t0 % 1000000000}};
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
  long slot_no = 0, cpu0 = -1, cpu1 = -1;
  int64_t win_t0 = 0, win_t1 = 0;
  int phase = 0; /* 0 warmup, 1 window, 2 silence */
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);

  struct epoll_event evs[2 * MAXK + 1];
  for (;;) {
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    if (phase == 0 && now >= warm_end) { phase = 1; cpu0 = relay_ticks(pid); win_t0 = now; getrusage(RUSAGE_SELF, &ru0); }
    if (phase == 1 && now >= win_end) { phase = 2; cpu1 = relay_ticks(pid); win_t1 = now; getrusage(RUSAGE_SELF, &ru1); }
    if (now >= stop) break;
    int k = epoll_wait(ep, evs, 2 * MAXK + 1, 50);
    for (int e = 0; e < k; e++) {
      uint32_t tag = evs[e].data.u32;
      if (tag == 0xffffffff) {
        uint64_t exp = 0;
        if (read(tfd, &exp, sizeof exp) != sizeof exp) continue;
        if (exp > 1) late_slots += (long)exp - 1;
        for (uint64_t x = 0; x < exp; x++, slot_no++) {
          if (phase == 2) continue;
          int slot = (int)(slot_no % SLOTS);
          long tick = slot_no / SLOTS;
          unsigned char in_window = phase == 1;
          for (int d = 0; d < 2; d++)
            for (int s = 0; s < K; s++) {
              /* calls on socket s in this slot: i = s + K * (slot + SLOTS * j) */
              int cnt = 0;
              for (long i = s + (long)K * slot; i < n; i += (long)K * SLOTS) {
                unsigned char *p = pkt[i][d];
                p[2] = (unsigned char)(tick >> 8); p[3] = (unsigned char)tick;
                put32(p + 4, (uint32_t)(tick * 160));
                p[21] = in_window;
                sidx[cnt] = (int)i;
                siov[cnt] = (struct iovec){p, PKT};
                smsg[cnt].msg_hdr = (struct msghdr){.msg_name = &dst[i][d], .msg_namelen = sizeof dst[i][d], .msg_iov = &siov[cnt], .msg_iovlen = 1};
                smsg[cnt].msg_len = 0;
                sent[i * 2 + d]++;
                cnt++;
                if (cnt == BATCH || i + (long)K * SLOTS >= n) {
                  int64_t ts = clock_ns(CLOCK_REALTIME);
                  for (int m = 0; m < cnt; m++) {
                    unsigned char *q = siov[m].iov_base;
                    for (int b = 0; b < 8; b++) q[24 + b] = (unsigned char)(ts >> (56 - 8 * b));
#ifdef WITH_SRTP
                    if ((srtp || eq) && d == 0) {
                      int len = PKT;
                      memcpy(sbuf[m], q, PKT);
                      if (srtp_protect(tx[sidx[m]], sbuf[m], &len) != srtp_err_status_ok) { fprintf(stderr, "rtpgen: srtp_protect failed\n"); return 1; }
                      if (srtp) siov[m] = (struct iovec){sbuf[m], (size_t)len};
                    }
#endif
                  }
                  int done = sendmmsg(fd[d][s], smsg, (unsigned)cnt, MSG_DONTWAIT);
                  batches++;
                  if (done < 0) done = 0;
                  for (int m = done; m < cnt; m++) {
                    sent[sidx[m] * 2 + d]--;
                    send_fail++;
                  }
                  if (in_window) win_sent += done;
                  cnt = 0;
                }
              }
            }
        }
        continue;
      }
      int d = (int)(tag / MAXK), s = (int)(tag % MAXK);
      for (;;) {
        for (int m = 0; m < BATCH; m++) {
          riov[m] = (struct iovec){rbuf[m], sizeof rbuf[m]};
          rmsg[m].msg_hdr = (struct msghdr){.msg_name = &rsrc[m], .msg_namelen = sizeof rsrc[m], .msg_iov = &riov[m], .msg_iovlen = 1,
                                            .msg_control = ctl[m], .msg_controllen = sizeof ctl[m]};
        }
        int got = recvmmsg(fd[d][s], rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) break;
        for (int m = 0; m < got; m++) {
          unsigned char *q = rbuf[m];
#ifdef WITH_SRTP
          if (srtp && d == 0) {
            int c = call_of_port[ntohs(rsrc[m].sin_port)] - 1, len = (int)rmsg[m].msg_len;
            if (c < 0 || len != PKT + TAG80) { foreign++; continue; }
            if (srtp_unprotect(rx[c], q, &len) != srtp_err_status_ok) { srtp_fail++; continue; }
            rmsg[m].msg_len = (unsigned)len;
          } else if (eq && d == 0) {
            int c = call_of_port[ntohs(rsrc[m].sin_port)] - 1, len = (int)rmsg[m].msg_len;
            if (c >= 0 && len == PKT) {
              unsigned char shadow[PKT + 32];
              memcpy(shadow, q, PKT);
              if (srtp_protect(rx[c], shadow, &len) != srtp_err_status_ok) srtp_fail++;
            }
          }
#endif
          if (rmsg[m].msg_len != PKT || memcmp(q + 12, "MBEN", 4)) { foreign++; continue; }
          uint32_t i = get32(q + 16);
          int from = q[20];
          /* what arrives on side d was sent by the other side, for a call of this socket */
          if (i >= (uint32_t)n || from != 1 - d || (int)(i % (uint32_t)K) != s) { misrouted++; continue; }
          recvd[i * 2 + from]++;
          if (q[21]) {
            int64_t tx = 0;
            for (int b = 0; b < 8; b++) tx = tx << 8 | q[24 + b];
            int64_t rx = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg[m].msg_hdr); c; c = CMSG_NXTHDR(&rmsg[m].msg_hdr, c))
              if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec t;
                memcpy(&t, CMSG_DATA(c), sizeof t);
                rx = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
              }
            if (!rx) rx = clock_ns(CLOCK_REALTIME);
            int64_t lat = rx - tx;
            if (lat < 0) lat = 0;
            if (lat > max_ns) max_ns = lat;
            int64_t us = lat / 1000;
            hist[us > HIST_US ? HIST_US : us]++;
            win_recv++;
          }
        }
        if (got < BATCH) break;
      }
    }
  }
  long tot_sent = 0, tot_recv = 0, lossy_calls = 0, dups = 0;
  for (long i = 0; i < n; i++) {
    int bad = 0;
    for (int d = 0; d < 2; d++) {
      tot_sent += sent[i * 2 + d];
      tot_recv += recvd[i * 2 + d];
      if (recvd[i * 2 + d] < sent[i * 2 + d]) bad = 1;
      if (recvd[i * 2 + d] > sent[i * 2 + d]) dups += recvd[i * 2 + d] - sent[i * 2 + d];
    }
    lossy_calls += bad;
  }
  double pct[3] = {50, 99, 99.9};
  long pv[3] = {-1, -1, -1};
  long acc = 0;
  for (int b = 0, j = 0; b <= HIST_US && j < 3; b++) {
    acc += hist[b];
    while (j < 3 && win_recv > 0 && acc >= (long)(pct[j] / 100.0 * (double)win_recv + 0.5)) pv[j++] = b;
  }
  long clk = sysconf(_SC_CLK_TCK);
  double win_s = (double)(win_t1 - win_t0) / 1e9;
  double relay_cpu = cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) / (double)clk : -1;
  double gen_cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                   (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
  printf("calls=%d sockets=%d sent=%ld received=%ld lost=%ld lossy_calls=%ld duplicates=%ld misrouted=%ld foreign=%ld send_fail=%ld "
         "late_slots=%ld window_s=%.3f window_sent=%ld window_received=%ld pps=%.0f relay_cpu_s=%.3f relay_core_pct=%.1f "
         "us_per_pkt=%.3f p50_us=%ld p99_us=%ld p999_us=%ld max_us=%.0f gen_core_pct=%.1f pkts_per_batch=%.1f mode=%s srtp_fail=%ld\n",
         n, 2 * K, tot_sent, tot_recv, tot_sent - tot_recv > 0 ? tot_sent - tot_recv : 0, lossy_calls, dups, misrouted, foreign, send_fail,
         late_slots, win_s, win_sent, win_recv, win_s > 0 ? (double)win_recv / win_s : 0, relay_cpu,
         relay_cpu >= 0 && win_s > 0 ? 100 * relay_cpu / win_s : -1, relay_cpu >= 0 && win_recv > 0 ? 1e6 * relay_cpu / (double)win_recv : -1,
         pv[0], pv[1], pv[2], (double)max_ns / 1000, win_s > 0 ? 100 * gen_cpu / win_s : -1,
         batches ? (double)(tot_sent + send_fail) / (double)batches : 0, srtp ? "srtp" : eq ? "rtpeq" : "rtp", srtp_fail);
  return 0;
}
