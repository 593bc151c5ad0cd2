# ninep benchmark workloads (busybox ash in the e2e guest, cwd = the 9p mount).
#
# tests/e2e/init.sh sources lib.sh first (set -e, fail, now_ns). The host
# (bench/guest_compare.py) has already put into the export:
#   list/       BENCH_LIST_FILES empty files, for the directory listing
#   src.tar     the untar source (a few thousand files of mixed sizes)
# Knobs (environment): BENCH_WORKLOADS (names below, space separated),
# BENCH_SIZE_MIB, BENCH_META_FILES, BENCH_LIST_FILES, BENCH_RAND_OPS, BENCH_PAR_PROCS.
#
# Every timed step runs after caches are dropped and prints BENCH-START <name>
# before and BENCH-RESULT <name> <nanoseconds> after (the host samples the
# server's CPU time at both). Times come from Debian's date (%N), in the guest.

BENCH_SIZE_MIB=${BENCH_SIZE_MIB:-256}
BENCH_META_FILES=${BENCH_META_FILES:-2000}
BENCH_LIST_FILES=${BENCH_LIST_FILES:-10000}
BENCH_RAND_OPS=${BENCH_RAND_OPS:-1000}
BENCH_TOP=$(pwd)

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

wants() {
    case " $BENCH_WORKLOADS " in *" $1 "*) return 0 ;; esac
    return 1
}

# timed NAME CMD...: drop caches, run CMD, print its wall time.
timed() {
    _name=$1
    shift
    drop_caches
    echo "BENCH-START $_name"
    _t0=$(now_ns)
    "$@"
    _t1=$(now_ns)
    echo "BENCH-RESULT $_name $((_t1 - _t0))"
}

# --- sequential I/O ---------------------------------------------------------------

seq_write() {
    dd if=/dev/zero of="$BENCH_TOP/seq.dat" bs=1M count="$BENCH_SIZE_MIB" conv=fsync 2>/dev/null
}

seq_read() {
    dd if="$BENCH_TOP/seq.dat" of=/dev/null bs=1M 2>/dev/null
}

# --- 4 KiB reads at queue depth 1 -------------------------------------------------------
# One dd per read on a descriptor the shell opened once: busybox dd seeks its
# stdin with SEEK_CUR, so the offsets walk forward by random gaps (reopening
# at the end). With cache=none each dd is one 4 KiB Tread. The same loop on
# a tmpfs file measures what the shell and dd cost; the host subtracts it.
# The two loops alternate in chunks of 50 reads, so that a change of load on
# the host slows both alike.

# rand_reads FD FILE BLOCKS N: N reads through fd FD (3: the share, 4: tmpfs).
rand_reads() {
    _fd=$1 _file=$2 _blocks=$3 _n=$4
    eval "_pos=\$_pos$_fd"
    _stride=$((_blocks / BENCH_RAND_OPS))
    [ "$_stride" -ge 1 ] || _stride=1
    _i=0
    while [ "$_i" -lt "$_n" ]; do
        _gap=$((RANDOM % (2 * _stride)))
        if [ $((_pos + _gap + 1)) -gt "$_blocks" ]; then
            eval "exec $_fd<\"\$_file\""
            _pos=0
        fi
        dd bs=4096 count=1 skip="$_gap" <&"$_fd" >/dev/null 2>&1
        _pos=$((_pos + _gap + 1))
        _i=$((_i + 1))
    done
    eval "_pos$_fd=\$_pos"
}

rand4k() {
    dd if=/dev/zero of=/tmp/cal.dat bs=4096 count=2048 2>/dev/null
    exec 3<"$BENCH_TOP/seq.dat" 4</tmp/cal.dat
    _pos3=0 _pos4=0 _raw=0 _cal=0 _done=0
    drop_caches
    echo "BENCH-START rand4k_raw"
    while [ "$_done" -lt "$BENCH_RAND_OPS" ]; do
        _n=$((BENCH_RAND_OPS - _done))
        [ "$_n" -le 50 ] || _n=50
        _t0=$(now_ns)
        rand_reads 3 "$BENCH_TOP/seq.dat" $((BENCH_SIZE_MIB * 256)) "$_n"
        _t1=$(now_ns)
        rand_reads 4 /tmp/cal.dat 2048 "$_n"
        _t2=$(now_ns)
        _raw=$((_raw + _t1 - _t0))
        _cal=$((_cal + _t2 - _t1))
        _done=$((_done + _n))
    done
    exec 3<&- 4<&-
    rm -f /tmp/cal.dat
    echo "BENCH-RESULT rand4k_raw $_raw"
    echo "BENCH-RESULT rand4k_cal $_cal"
}

# --- metadata ---------------------------------------------------------------------------

meta_create() {
    _i=0
    while [ "$_i" -lt "$BENCH_META_FILES" ]; do
        : >"f$_i"
        _i=$((_i + 1))
    done
}

meta_stat() {
    ls -l . >/dev/null
}

# The shell's glob: readdir only, no stat per entry.
list_dir() {
    _dir=$1 _want=$2
    set -- "$_dir"/*
    [ "$#" -eq "$_want" ] || fail "listed $# entries in $_dir, expected $_want"
}

meta_list() {
    list_dir . "$BENCH_META_FILES"
}

meta_unlink() {
    rm -f ./f*
}

# --- several guest processes at once ------------------------------------------------------
# BENCH_PAR_PROCS processes, each on its own file or directory, so requests
# from several processes are in flight on the one channel at once (a server
# that batches or overlaps them shows it here): each writes then reads
# 1/PROCS of BENCH_SIZE_MIB with 256 KiB requests, then each creates, stats
# and unlinks 1/PROCS of BENCH_META_FILES.

BENCH_PAR_PROCS=${BENCH_PAR_PROCS:-4}

# in_parallel FUNC: FUNC 0 .. FUNC PROCS-1 as background jobs; fails if any did.
in_parallel() {
    _i=0 _pids=""
    while [ "$_i" -lt "$BENCH_PAR_PROCS" ]; do
        "$1" "$_i" &
        _pids="$_pids $!"
        _i=$((_i + 1))
    done
    for _p in $_pids; do
        wait "$_p" || fail "$1: a parallel job failed"
    done
}

par_write_one() {
    dd if=/dev/zero of="$BENCH_TOP/par$1.dat" bs=256k count=$((BENCH_SIZE_MIB * 4 / BENCH_PAR_PROCS)) \
        conv=fsync 2>/dev/null
}

par_read_one() {
    dd if="$BENCH_TOP/par$1.dat" of=/dev/null bs=256k 2>/dev/null
}

par_meta_one() {
    mkdir "$BENCH_TOP/pm$1"
    cd "$BENCH_TOP/pm$1"
    _j=0
    while [ "$_j" -lt $((BENCH_META_FILES / BENCH_PAR_PROCS)) ]; do
        : >"f$_j"
        _j=$((_j + 1))
    done
    ls -l . >/dev/null
    rm -f ./f*
    cd "$BENCH_TOP"
    rmdir "$BENCH_TOP/pm$1"
}

# --- untar ---------------------------------------------------------------------------------

untar() {
    tar -xf /tmp/src.tar -C "$BENCH_TOP/untar"
}

# --- run ---------------------------------------------------------------------------------

mkdir -p "$BENCH_TOP/untar" "$BENCH_TOP/meta"
if wants seq_write || wants seq_read || wants rand4k; then
    if wants seq_write; then
        timed seq_write seq_write
    else
        seq_write
    fi
fi
wants seq_read && timed seq_read seq_read
wants rand4k && rand4k
if wants metadata; then
    cd "$BENCH_TOP/meta"
    timed meta_create meta_create
    timed meta_stat meta_stat
    timed meta_list meta_list
    timed meta_unlink meta_unlink
    cd "$BENCH_TOP"
fi
wants listdir && timed listdir list_dir "$BENCH_TOP/list" "$BENCH_LIST_FILES"
if wants parallel; then
    timed par_write in_parallel par_write_one
    timed par_read in_parallel par_read_one
    timed par_meta in_parallel par_meta_one
    rm -f "$BENCH_TOP"/par*.dat
fi
if wants untar; then
    cp "$BENCH_TOP/src.tar" /tmp/src.tar
    timed untar untar
    rm -f /tmp/src.tar
fi
echo "BENCH-DONE"
