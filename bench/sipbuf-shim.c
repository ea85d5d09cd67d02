/*
 * Diagnostic only (bench/run.sh target "medpool_bigbuf"): an LD_PRELOAD shim that gives every UDP
 * socket a process binds an SO_RCVBUF/SO_SNDBUF of RCVBUF_BYTES (default 4 MiB; the kernel doubles
 * it and caps it at net.core.rmem_max/wmem_max), i.e. what Kamailio's `maxbuffer` and SIPp's
 * -buff_size do. medpool leaves its SIP socket at the kernel default (rmem_default, 208 KiB here);
 * this shows what the CPS would be with a larger buffer, without changing medpool or the machine.
 * Build: cc -shared -fPIC -O2 -o sipbuf-shim.so sipbuf-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM) {
        const char *s = getenv("RCVBUF_BYTES");
        int n = s ? atoi(s) : 4194304;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
    }
    return real_bind(fd, addr, len);
}
