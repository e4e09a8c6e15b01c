/*
 * refill build's preload library for componentize-py (x86-64 Linux).
 *
 * componentize-py runs the Python interpreter inside wasmtime, in its own
 * process, and snapshots its memory. What the interpreter saw ends up in
 * the component: the clocks, random bytes, file times, inode numbers,
 * directory sizes and the order of directory listings. Loaded with
 * LD_PRELOAD and REFILL_BUILD_SHIM=1, this library makes each of them
 * the same on every build:
 *
 * - clock_gettime, gettimeofday and time read a stopped clock
 *   (2001-09-09T01:46:40Z for every clock). These go through libc (Rust's
 *   std calls clock_gettime), so overriding the symbols is enough.
 * - getrandom, statx, newfstatat, fstat, stat, lstat and getdents64 are
 *   trapped by a seccomp filter (wasmtime-wasi reaches the file system
 *   through rustix, which issues raw system calls, not libc calls). The
 *   SIGSYS handler performs them itself, marked so that the filter lets
 *   them through (a sixth argument that none of them uses), and then:
 *   getrandom fills the buffer with a fixed pattern; getdents64 returns the
 *   whole directory sorted by name; and for calls from anywhere but the
 *   dynamic loader, the stat calls report fixed times, device and inode,
 *   and a fixed size for directories, and listings fixed inode numbers.
 *   The dynamic loader's own calls keep their real metadata: it tells
 *   libraries apart by device and inode.
 *
 * The filter is installed only in a Python interpreter (a launcher before
 * it, such as pyenv's shell shims, execs normally), and there exec fails
 * with EPERM: a filter outlives an exec, its SIGSYS handler does not.
 *
 * Nothing else changes: file contents, sizes of files, errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/stat.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__x86_64__)

#define FIXED_TIME 1000000000L
#define MARK 0x52464c4cL /* "RFLL": the sixth argument of our own calls */
#define FIXED_DEV 0x2aUL
#define FIXED_INO 1UL
#define DIR_SIZE 4096

/* ---- clocks ---------------------------------------------------------- */

int clock_gettime(clockid_t clock, struct timespec *ts) {
    (void)clock;
    if (ts) {
        ts->tv_sec = FIXED_TIME;
        ts->tv_nsec = 0;
    }
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    if (tv) {
        tv->tv_sec = FIXED_TIME;
        tv->tv_usec = 0;
    }
    return 0;
}

time_t time(time_t *t) {
    if (t) *t = FIXED_TIME;
    return FIXED_TIME;
}

/* ---- raw calls that the filter lets through -------------------------- */

static long raw(long n, long a, long b, long c, long d, long e) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = MARK;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* ---- who is calling --------------------------------------------------- */

/* The executable segments of the dynamic loader. */
#define RANGES 8
static uintptr_t range_start[RANGES], range_end[RANGES];
static int ranges;

static int note_range(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    if (!strstr(name, "/ld-linux")) return 0;
    for (int i = 0; i < info->dlpi_phnum && ranges < RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
        range_start[ranges] = info->dlpi_addr + ph->p_vaddr;
        range_end[ranges] = range_start[ranges] + ph->p_memsz;
        ranges++;
    }
    return 0;
}

static int from_loader(const void *address) {
    uintptr_t at = (uintptr_t)address;
    for (int i = 0; i < ranges; i++)
        if (at >= range_start[i] && at < range_end[i]) return 1;
    return 0;
}

/* ---- normalizing ----------------------------------------------------- */

static void fix_stat(struct stat *st) {
    int dir = S_ISDIR(st->st_mode);
    st->st_dev = FIXED_DEV;
    st->st_ino = FIXED_INO;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = FIXED_TIME;
    st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = 0;
    st->st_nlink = dir ? 2 : 1;
    st->st_uid = st->st_gid = 0;
    st->st_blksize = 4096;
    if (dir) st->st_size = DIR_SIZE;
    st->st_blocks = (st->st_size + 511) / 512;
}

static void fix_statx(struct statx *stx) {
    int dir = S_ISDIR(stx->stx_mode);
    struct statx_timestamp fixed = {.tv_sec = FIXED_TIME, .tv_nsec = 0};
    stx->stx_dev_major = 0;
    stx->stx_dev_minor = FIXED_DEV;
    stx->stx_rdev_major = stx->stx_rdev_minor = 0;
    stx->stx_ino = FIXED_INO;
    stx->stx_atime = stx->stx_mtime = stx->stx_ctime = stx->stx_btime = fixed;
    stx->stx_nlink = dir ? 2 : 1;
    stx->stx_uid = stx->stx_gid = 0;
    stx->stx_blksize = 4096;
    if (dir) stx->stx_size = DIR_SIZE;
    stx->stx_blocks = (stx->stx_size + 511) / 512;
    stx->stx_mnt_id = 0;
}

static void fill(unsigned char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)(i * 131 + 7);
}

/* ---- sorted directory listings --------------------------------------- */

struct dirent64_rec {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* One listing being served, per open directory descriptor. */
struct listing {
    int fd;          /* -1: free */
    uint64_t dev, ino;
    char *data;      /* the sorted records */
    size_t len, pos;
};

#define LISTINGS 64
static struct listing listings[LISTINGS] = {[0 ... LISTINGS - 1] = {.fd = -1}};
static volatile int listings_lock;

static void lock(void) {
    while (__sync_lock_test_and_set(&listings_lock, 1)) {
    }
}
static void unlock(void) { __sync_lock_release(&listings_lock); }

static int by_name(const void *a, const void *b) {
    const struct dirent64_rec *x = *(const struct dirent64_rec *const *)a;
    const struct dirent64_rec *y = *(const struct dirent64_rec *const *)b;
    return strcmp(x->d_name, y->d_name);
}

static void drop(struct listing *l) {
    free(l->data);
    l->data = NULL;
    l->fd = -1;
}

/* Reads the whole directory from the descriptor's offset, sorted. */
static long load(struct listing *l, int fd, uint64_t dev, uint64_t ino, int fixed_ino) {
    size_t cap = 1 << 16, len = 0;
    char *raw_data = malloc(cap);
    if (!raw_data) return -ENOMEM;
    for (;;) {
        if (cap - len < 1 << 15) {
            char *grown = realloc(raw_data, cap * 2);
            if (!grown) {
                free(raw_data);
                return -ENOMEM;
            }
            raw_data = grown;
            cap *= 2;
        }
        long n = raw(SYS_getdents64, fd, (long)(raw_data + len), (long)(cap - len), 0, 0);
        if (n < 0) {
            free(raw_data);
            return n;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    size_t count = 0;
    for (size_t at = 0; at < len; at += ((struct dirent64_rec *)(raw_data + at))->d_reclen) count++;
    struct dirent64_rec **recs = malloc((count ? count : 1) * sizeof *recs);
    char *sorted = malloc(len ? len : 1);
    if (!recs || !sorted) {
        free(recs);
        free(sorted);
        free(raw_data);
        return -ENOMEM;
    }
    size_t i = 0;
    for (size_t at = 0; at < len; at += ((struct dirent64_rec *)(raw_data + at))->d_reclen)
        recs[i++] = (struct dirent64_rec *)(raw_data + at);
    qsort(recs, count, sizeof *recs, by_name);
    size_t out = 0;
    for (i = 0; i < count; i++) {
        memcpy(sorted + out, recs[i], recs[i]->d_reclen);
        struct dirent64_rec *rec = (struct dirent64_rec *)(sorted + out);
        if (fixed_ino) rec->d_ino = FIXED_INO + i + 1;
        rec->d_off = (int64_t)(i + 1);
        out += rec->d_reclen;
    }
    free(recs);
    free(raw_data);
    l->fd = fd;
    l->dev = dev;
    l->ino = ino;
    l->data = sorted;
    l->len = out;
    l->pos = 0;
    return 0;
}

static long dents(int fd, char *buf, size_t count, int fixed_ino) {
    struct stat st;
    long r = raw(SYS_fstat, fd, (long)&st, 0, 0, 0);
    if (r < 0) return r;
    long offset = raw(SYS_lseek, fd, 0, SEEK_CUR, 0, 0);
    lock();
    struct listing *l = NULL, *free_slot = NULL;
    for (int i = 0; i < LISTINGS; i++) {
        if (listings[i].fd == fd) l = &listings[i];
        else if (listings[i].fd < 0 && !free_slot) free_slot = &listings[i];
    }
    /* Another directory under a reused descriptor, or a rewind: start over. */
    if (l && (l->dev != st.st_dev || l->ino != st.st_ino || offset == 0)) {
        drop(l);
        free_slot = l;
        l = NULL;
    }
    if (!l) {
        if (!free_slot) {
            unlock();
            return raw(SYS_getdents64, fd, (long)buf, (long)count, 0, 0);
        }
        r = load(free_slot, fd, st.st_dev, st.st_ino, fixed_ino);
        if (r < 0) {
            unlock();
            return r;
        }
        l = free_slot;
    }
    size_t written = 0;
    while (l->pos < l->len) {
        struct dirent64_rec *rec = (struct dirent64_rec *)(l->data + l->pos);
        if (written + rec->d_reclen > count) break;
        memcpy(buf + written, rec, rec->d_reclen);
        written += rec->d_reclen;
        l->pos += rec->d_reclen;
    }
    if (written == 0 && l->pos < l->len) {
        unlock();
        return -EINVAL;
    }
    if (written == 0) drop(l);
    unlock();
    return (long)written;
}

/* ---- the trap -------------------------------------------------------- */

static void on_sigsys(int sig, siginfo_t *info, void *context) {
    (void)sig;
    int saved = errno;
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    long a = r[REG_RDI], b = r[REG_RSI], c = r[REG_RDX], d = r[REG_R10], e = r[REG_R8];
    long ret;
    int normalize = !from_loader(info->si_call_addr);
    switch (info->si_syscall) {
    case SYS_getrandom:
        fill((unsigned char *)a, (size_t)b);
        ret = b;
        break;
    case SYS_statx:
        ret = raw(SYS_statx, a, b, c, d, e);
        if (ret == 0 && normalize) fix_statx((struct statx *)e);
        break;
    case SYS_newfstatat:
        ret = raw(SYS_newfstatat, a, b, c, d, 0);
        if (ret == 0 && normalize) fix_stat((struct stat *)c);
        break;
    case SYS_fstat:
    case SYS_stat:
    case SYS_lstat:
        ret = raw(info->si_syscall, a, b, 0, 0, 0);
        if (ret == 0 && normalize) fix_stat((struct stat *)b);
        break;
    case SYS_getdents64:
        ret = dents((int)a, (char *)b, (size_t)c, normalize);
        break;
    case SYS_execve:
    case SYS_execveat:
        /* The filter would outlive the exec, and this handler would not. */
        ret = -EPERM;
        break;
    default:
        ret = -ENOSYS;
    }
    r[REG_RAX] = ret;
    errno = saved;
}

__attribute__((constructor)) static void install(void) {
    const char *on = getenv("REFILL_BUILD_SHIM");
    if (!on || strcmp(on, "1") != 0) return;
    /* Only in the Python interpreter that runs componentize-py: a launcher
     * before it (pyenv's shims are shell scripts) must still be able to
     * exec it. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    const char *base = strrchr(exe, '/');
    base = base ? base + 1 : exe;
    if (strncmp(base, "python", 6) != 0) return;
    dl_iterate_phdr(note_range, NULL);
    if (ranges == 0) abort();
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsys;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSYS, &action, NULL) != 0) abort();

    const unsigned trapped[] = {SYS_statx, SYS_newfstatat, SYS_fstat, SYS_stat, SYS_lstat,
                                SYS_getdents64, SYS_getrandom, SYS_execve, SYS_execveat};
    enum { N = sizeof trapped / sizeof trapped[0] };
    /*
     * 0: load arch; 1: not x86-64 -> allow
     * 2: load the sixth argument; 3: our mark -> allow
     * 4: load nr; then one jeq per trapped call -> trap
     * allow; trap
     */
    struct sock_filter filter[5 + N + 2];
    int at = 0;
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    filter[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 2 + N + 1);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[5]));
    filter[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MARK, N + 1, 0);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < N; i++)
        filter[at++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, trapped[i], (unsigned char)(N - i), 0);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    filter[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
    struct sock_fprog program = {.len = (unsigned short)at, .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) abort();
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) abort();
}

#endif
