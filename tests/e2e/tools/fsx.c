/* fsx -- a small fsx-style file exerciser for the ninep e2e guest.
 *
 * fsx [-N ops] [-S seed] [-l maxlen] [-o maxoplen] [-m modelfile] [-M] FILE
 *
 * Keeps an in-memory model of FILE and applies random operations to both:
 * pwrite at random offsets and sizes (also beyond EOF, leaving holes),
 * pread compared with the model byte for byte, ftruncate up and down,
 * fstat size checks, fsync, and close + reopen; with -M also reads and
 * writes through a shared mmap (msync'd), for the cache=loose/mmap modes
 * where the 9p client moves data through the page cache.  Written bytes are never 0
 * and encode the op that wrote them ((op * 7 + pos) % 255 + 1), so a
 * mismatch tells a hole from stale data and names the op it came from.
 *
 * On a mismatch it prints the op number, the offset, the first differing
 * byte and the last ops, and exits 1 (2 for a failed system call).  At the
 * end it reads the whole file back through a fresh descriptor, writes the
 * model to MODELFILE (so the caller can md5sum both after dropping caches)
 * and prints one "FSX-DONE" summary line.  The seed is always printed:
 * rerun with -S to reproduce.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum op_kind { OP_WRITE, OP_READ, OP_TRUNCATE, OP_STAT, OP_FSYNC, OP_REOPEN, OP_MAPWRITE, OP_MAPREAD, OP_KINDS };
static const char *const op_names[OP_KINDS] = {"write", "read", "truncate", "stat", "fsync", "reopen",
                                               "mapwrite", "mapread"};
/* Weights out of 100, in enum order: without and with -M. */
static const int op_weights_plain[OP_KINDS] = {40, 38, 10, 6, 3, 3, 0, 0};
static const int op_weights_mmap[OP_KINDS] = {30, 28, 10, 6, 3, 3, 10, 10};
static const int *op_weights = op_weights_plain;

struct op_record {
    long num;
    enum op_kind kind;
    uint64_t offset, length, size_after;
};

#define HISTORY 32
static struct op_record history[HISTORY];
static long ops_done;

static const char *path;
static int fd = -1;
static unsigned char *model, *scratch;
static uint64_t model_size, max_len, max_op_len;
static uint64_t rng_state, seed;
static long counts[OP_KINDS];
static uint64_t bytes_written, bytes_read;

/* splitmix64: small, seedable, good enough for picking operations. */
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

/* A length in [1, max]: log-uniform, so tiny and large transfers both occur. */
static uint64_t rnd_len(uint64_t max)
{
    int bits = 0;
    while ((1ULL << bits) < max)
        bits++;
    uint64_t cap = 1ULL << rnd_below((uint64_t)bits + 1);
    uint64_t len = 1 + rnd_below(cap);
    return len > max ? max : len;
}

static unsigned char pattern(long op, uint64_t pos)
{
    return (unsigned char)(((uint64_t)op * 7 + pos) % 255 + 1);
}

static void record(enum op_kind kind, uint64_t offset, uint64_t length)
{
    struct op_record *r = &history[ops_done % HISTORY];
    r->num = ops_done;
    r->kind = kind;
    r->offset = offset;
    r->length = length;
    r->size_after = model_size;
}

static void dump_history(void)
{
    long first = ops_done >= HISTORY ? ops_done - HISTORY + 1 : 0;
    fprintf(stderr, "last ops (model size after each):\n");
    for (long n = first; n <= ops_done; n++) {
        const struct op_record *r = &history[n % HISTORY];
        if (r->num != n)
            continue;
        fprintf(stderr, "  op %ld %s off=%" PRIu64 " len=%" PRIu64 " size=%" PRIu64 "\n", r->num,
                op_names[r->kind], r->offset, r->length, r->size_after);
    }
}

static void die_errno(const char *what)
{
    fprintf(stderr, "FSX-ERROR: op %ld: %s: %s (seed %" PRIu64 ")\n", ops_done, what, strerror(errno),
            seed);
    dump_history();
    exit(2);
}


static void mismatch(const char *what, uint64_t offset, uint64_t at, unsigned char want, unsigned char got)
{
    fprintf(stderr,
            "FSX-MISMATCH: op %ld (%s) offset %" PRIu64 ": first differing byte at file offset %" PRIu64
            ": expected 0x%02x got 0x%02x; file size in model %" PRIu64 " (seed %" PRIu64 ")\n",
            ops_done, what, offset, at, want, got, model_size, seed);
    if (got == 0)
        fprintf(stderr, "  got 0: a hole or truncated range where data was expected\n");
    else /* 73 is the inverse of 7 mod 255 */
        fprintf(stderr, "  if stale, the got byte was written by an op = %lu (mod 255)\n",
                (unsigned long)((((got - 1 + 255 - at % 255) % 255) * 73) % 255));
    dump_history();
    exit(1);
}

static void open_file(void)
{
    fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        die_errno("open");
}

static void full_pread(int f, unsigned char *buf, uint64_t len, uint64_t offset, uint64_t *got)
{
    *got = 0;
    while (*got < len) {
        ssize_t n = pread(f, buf + *got, len - *got, (off_t)(offset + *got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die_errno("pread");
        }
        if (n == 0)
            break;
        *got += (uint64_t)n;
    }
}

/* Compare len bytes read at offset with the model (which is 0 past model_size). */
static void verify(const char *what, const unsigned char *buf, uint64_t offset, uint64_t len, uint64_t got)
{
    uint64_t want_len = offset >= model_size ? 0 : (model_size - offset < len ? model_size - offset : len);
    for (uint64_t i = 0; i < got && i < want_len; i++)
        if (buf[i] != model[offset + i])
            mismatch(what, offset, offset + i, model[offset + i], buf[i]);
    if (got != want_len) {
        fprintf(stderr,
                "FSX-MISMATCH: op %ld (%s) offset %" PRIu64 ": read %" PRIu64 " bytes, expected %" PRIu64
                " (model size %" PRIu64 ", seed %" PRIu64 ")\n",
                ops_done, what, offset, got, want_len, model_size, seed);
        dump_history();
        exit(1);
    }
}

/* A random range to write, inside max_len, filled into scratch with this op's pattern. */
static void pick_write_range(uint64_t *offset, uint64_t *len)
{
    *offset = rnd_below(max_len);
    *len = rnd_len(max_op_len);
    if (*offset + *len > max_len)
        *len = max_len - *offset;
    for (uint64_t i = 0; i < *len; i++)
        scratch[i] = pattern(ops_done, *offset + i);
}

static void model_write(enum op_kind kind, uint64_t offset, uint64_t len)
{
    memcpy(model + offset, scratch, len);
    if (offset + len > model_size)
        model_size = offset + len; /* a gap before offset is already 0 in the model */
    bytes_written += len;
    record(kind, offset, len);
}

static void do_write(void)
{
    uint64_t offset, len;
    pick_write_range(&offset, &len);
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, scratch + done, len - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die_errno("pwrite");
        }
        if (n == 0) {
            errno = EIO;
            die_errno("pwrite wrote 0 bytes");
        }
        done += (uint64_t)n;
    }
    model_write(OP_WRITE, offset, len);
}

struct mapping {
    unsigned char *base; /* page-aligned start of the mapping */
    unsigned char *at;   /* the byte at the requested offset */
    size_t len;
};

/* Map [offset, offset+len) of the file shared; mappings start on a page boundary. */
static struct mapping map_range(uint64_t offset, uint64_t len, int prot)
{
    uint64_t map_off = offset & ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
    struct mapping m = {.len = offset + len - map_off};
    void *p = mmap(NULL, m.len, prot, MAP_SHARED, fd, (off_t)map_off);
    if (p == MAP_FAILED)
        die_errno("mmap");
    m.base = p;
    m.at = m.base + (offset - map_off);
    return m;
}

static void unmap(struct mapping m)
{
    if (munmap(m.base, m.len) < 0)
        die_errno("munmap");
}

/* Store through a shared mapping (extending the file first), then msync. */
static void do_mapwrite(void)
{
    uint64_t offset, len;
    pick_write_range(&offset, &len);
    record(OP_MAPWRITE, offset, len);
    if (offset + len > model_size && ftruncate(fd, (off_t)(offset + len)) < 0)
        die_errno("ftruncate to extend for mapwrite");
    struct mapping m = map_range(offset, len, PROT_READ | PROT_WRITE);
    memcpy(m.at, scratch, len);
    if (msync(m.base, m.len, MS_SYNC) < 0)
        die_errno("msync");
    unmap(m);
    model_write(OP_MAPWRITE, offset, len);
}

static void do_mapread(void)
{
    uint64_t offset = rnd_below(model_size), len = rnd_len(max_op_len);
    record(OP_MAPREAD, offset, len);
    if (model_size == 0)
        return;
    if (offset + len > model_size)
        len = model_size - offset;
    struct mapping m = map_range(offset, len, PROT_READ);
    memcpy(scratch, m.at, len);
    unmap(m);
    bytes_read += len;
    verify("mapread", scratch, offset, len, len);
}

static void do_read(void)
{
    /* Mostly inside the file; sometimes straddling or past EOF. */
    uint64_t offset = rnd_below(model_size + model_size / 8 + 1);
    uint64_t len = rnd_len(max_op_len);
    uint64_t got;
    record(OP_READ, offset, len);
    full_pread(fd, scratch, len, offset, &got);
    bytes_read += got;
    verify("read", scratch, offset, len, got);
}

static void do_truncate(void)
{
    uint64_t size = rnd_below(max_len + 1);
    if (ftruncate(fd, (off_t)size) < 0)
        die_errno("ftruncate");
    if (size < model_size)
        memset(model + size, 0, model_size - size); /* keeps the model 0 past its size */
    model_size = size;
    record(OP_TRUNCATE, size, 0);
}

static void do_stat(void)
{
    struct stat st;
    record(OP_STAT, 0, 0);
    if (fstat(fd, &st) < 0)
        die_errno("fstat");
    if ((uint64_t)st.st_size != model_size) {
        fprintf(stderr, "FSX-MISMATCH: op %ld (stat): size %lld, model %" PRIu64 " (seed %" PRIu64 ")\n",
                ops_done, (long long)st.st_size, model_size, seed);
        dump_history();
        exit(1);
    }
}

static void do_fsync(void)
{
    record(OP_FSYNC, 0, 0);
    if (fsync(fd) < 0)
        die_errno("fsync");
}

static void do_reopen(void)
{
    record(OP_REOPEN, 0, 0);
    if (close(fd) < 0)
        die_errno("close");
    open_file();
}

static enum op_kind pick_op(void)
{
    int r = (int)rnd_below(100);
    for (int k = 0; k < OP_KINDS; k++) {
        if (r < op_weights[k])
            return (enum op_kind)k;
        r -= op_weights[k];
    }
    return OP_READ;
}

/* Read the whole file through a new descriptor, then save the model. */
static void final_check(const char *model_path)
{
    int f = open(path, O_RDONLY);
    if (f < 0)
        die_errno("open for the final check");
    unsigned char *all = malloc(max_len + 1);
    uint64_t got;
    if (!all)
        die_errno("malloc");
    full_pread(f, all, max_len + 1, 0, &got);
    close(f);
    verify("final read", all, 0, max_len + 1, got);
    free(all);
    if (!model_path)
        return;
    int m = open(model_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (m < 0 || write(m, model, model_size) != (ssize_t)model_size || close(m) < 0)
        die_errno("write the model file");
}

#define USAGE "usage: fsx [-N ops] [-S seed] [-l maxlen] [-o maxoplen] [-m modelfile] [-M] FILE\n"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long nops = 10000;
    const char *model_path = NULL;
    int have_seed = 0, c;
    max_len = 256 * 1024;
    max_op_len = 64 * 1024;
    while ((c = getopt(argc, argv, "N:S:l:o:m:M")) != -1) {
        switch (c) {
        case 'N': nops = atol(optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 0); have_seed = 1; break;
        case 'l': max_len = strtoull(optarg, NULL, 0); break;
        case 'o': max_op_len = strtoull(optarg, NULL, 0); break;
        case 'm': model_path = optarg; break;
        case 'M': op_weights = op_weights_mmap; break;
        default:
            fprintf(stderr, USAGE);
            return 2;
        }
    }
    if (optind != argc - 1 || nops < 0 || max_len == 0 || max_op_len == 0) {
        fprintf(stderr, USAGE);
        return 2;
    }
    path = argv[optind];
    if (!have_seed)
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    rng_state = seed;
    model = calloc(max_len, 1);
    scratch = malloc(max_op_len);
    if (!model || !scratch)
        die_errno("malloc");
    printf("FSX-START file=%s seed=%" PRIu64 " ops=%ld maxlen=%" PRIu64 " maxoplen=%" PRIu64 "\n", path, seed,
           nops, max_len, max_op_len);
    fflush(stdout);

    open_file();
    if (ftruncate(fd, 0) < 0)
        die_errno("initial ftruncate");
    double start = now();
    for (ops_done = 0; ops_done < nops; ops_done++) {
        enum op_kind kind = pick_op();
        counts[kind]++;
        switch (kind) {
        case OP_WRITE: do_write(); break;
        case OP_READ: do_read(); break;
        case OP_TRUNCATE: do_truncate(); break;
        case OP_STAT: do_stat(); break;
        case OP_FSYNC: do_fsync(); break;
        case OP_REOPEN: do_reopen(); break;
        case OP_MAPWRITE: do_mapwrite(); break;
        case OP_MAPREAD: do_mapread(); break;
        default: break;
        }
        if ((ops_done + 1) % 2000 == 0) {
            printf("FSX-PROGRESS %ld ops, %.1fs\n", ops_done + 1, now() - start);
            fflush(stdout);
        }
    }
    if (close(fd) < 0)
        die_errno("close");
    final_check(model_path);
    double elapsed = now() - start;
    printf("FSX-DONE ops=%ld mismatches=0 seed=%" PRIu64 " size=%" PRIu64 " writes=%ld reads=%ld truncates=%ld"
           " stats=%ld fsyncs=%ld reopens=%ld mapwrites=%ld mapreads=%ld written=%" PRIu64 " read=%" PRIu64 " elapsed=%.1f ops_per_s=%.0f\n",
           nops, seed, model_size, counts[OP_WRITE], counts[OP_READ], counts[OP_TRUNCATE], counts[OP_STAT],
           counts[OP_FSYNC], counts[OP_REOPEN], counts[OP_MAPWRITE], counts[OP_MAPREAD], bytes_written, bytes_read, elapsed,
           elapsed > 0 ? nops / elapsed : 0.0);
    return 0;
}
