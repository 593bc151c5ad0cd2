#!/bin/sh
# ninep e2e guest /init (PID 1 in the initramfs built by tests/e2e/guest.py).
#
# Per-run inputs come from the initrd overlay appended by the host:
#   /e2e/config       shell variables: E2E_NSHARES, E2E_SHARE<i>_{KIND,TAG,MNT,OPTS,MOUNT}
#   /e2e/env          exported variables for the workload
#   /e2e/lib.sh       check helpers for workloads
#   /e2e/workload.sh  the workload itself
# The workload runs as: sh -c ". /e2e/env; . /e2e/lib.sh; . /e2e/workload.sh"
# (lib.sh ends with set -e) in $E2E_WORKDIR, stdin /dev/null. Output goes to
# the serial console; the host looks for the @@NINEP-E2E-...@@ markers below.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /root /mnt
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd 2>/dev/null

e2e_finish() {
    echo "@@NINEP-E2E-EXIT=$1@@"
    sync
    # -no-reboot turns the reboot into a QEMU exit.
    reboot -f
    sleep 30
}

e2e_setup_failed() {
    echo "E2E-SETUP-FAILED: $*"
    e2e_finish 125
}

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/e2e/$mod" || e2e_setup_failed "insmod $mod"
done </lib/modules/e2e/order

[ -f /e2e/config ] || e2e_setup_failed "no /e2e/config in the initrd overlay"
. /e2e/config

# Wait (bounded) for a virtio-serial port named $1; print its /dev node.
e2e_find_vport() {
    n=0
    while [ $n -lt 200 ]; do
        for d in /sys/class/virtio-ports/*; do
            [ -f "$d/name" ] || continue
            if [ "$(cat "$d/name")" = "$1" ] && [ -c "/dev/${d##*/}" ]; then
                echo "/dev/${d##*/}"
                return 0
            fi
        done
        n=$((n + 1))
        sleep 0.05
    done
    return 1
}

# trans=fd over a virtio-serial port. virtio_console has no read_iter or
# write_iter in 6.1, so the kernel cannot use the port's fd directly
# (mount fails EINVAL). Instead the kernel gets two FIFOs and two dd relay
# FIFO <-> port. The port may be open only once, so it is opened O_RDWR
# once (fd 7) and both relays inherit that one descriptor.
#
# The kernel holds the only read end of .out and the .in FIFO's only
# writer is the relay, so when the server closes the connection the
# kernel sees EOF and fails requests at once instead of hanging.
# Before the host side is connected a read of the port returns 0, so the
# server->guest relay retries while it has received nothing yet.
e2e_setup_fd() {
    i=$1 tag=$2 mnt=$3 opts=$4 domount=$5
    port=$(e2e_find_vport "$tag") || e2e_setup_failed "no virtio-serial port named $tag"
    in=/run/ninep-$i.in out=/run/ninep-$i.out
    mkfifo "$in" "$out" || e2e_setup_failed "mkfifo"
    echo "$port" >/run/ninep-$i.port
    exec 7<>"$port" || e2e_setup_failed "open $port"
    # guest -> server
    dd if="$out" bs=65536 >&7 2>/dev/null &
    # server -> guest
    (
        n=0
        while :; do
            dd bs=65536 <&7 2>/run/ninep-$i.dd.log
            if ! grep -q '^0+0 records in' /run/ninep-$i.dd.log; then
                echo "E2E: share $i: the 9p server closed the connection" >/dev/console
                exit 0
            fi
            n=$((n + 1))
            if [ $n -ge 400 ]; then
                echo "E2E: share $i: the host side of $port never connected" >/dev/console
                exit 1
            fi
            sleep 0.05
        done
    ) >"$in" &
    exec 7>&-
    if [ "$domount" = 1 ]; then
        # These opens rendezvous with the relays' opens of the FIFOs.
        exec 8<"$in" 9>"$out"
        mount -t 9p -o "trans=fd,rfdno=8,wfdno=9,$opts" "ninep$i" "$mnt" \
            || { exec 8<&- 9>&-; e2e_setup_failed "mount trans=fd share $i ($tag) on $mnt"; }
        exec 8<&- 9>&-
    fi
}

e2e_setup_virtio() {
    i=$1 tag=$2 mnt=$3 opts=$4 domount=$5
    [ "$domount" = 1 ] || return 0
    mount -t 9p -o "trans=virtio,$opts" "$tag" "$mnt" \
        || e2e_setup_failed "mount trans=virtio share $i ($tag) on $mnt"
}

i=0
while [ $i -lt "${E2E_NSHARES:-0}" ]; do
    eval "kind=\$E2E_SHARE${i}_KIND tag=\$E2E_SHARE${i}_TAG mnt=\$E2E_SHARE${i}_MNT"
    eval "opts=\$E2E_SHARE${i}_OPTS domount=\$E2E_SHARE${i}_MOUNT"
    mkdir -p "$mnt"
    case "$kind" in
        fd) e2e_setup_fd "$i" "$tag" "$mnt" "$opts" "$domount" ;;
        virtio) e2e_setup_virtio "$i" "$tag" "$mnt" "$opts" "$domount" ;;
        *) e2e_setup_failed "unknown share kind $kind" ;;
    esac
    i=$((i + 1))
done

cd "${E2E_WORKDIR:-/mnt}" || e2e_setup_failed "cd ${E2E_WORKDIR:-/mnt}"
echo "@@NINEP-E2E-START@@"
sh -c '. /e2e/env; . /e2e/lib.sh; . /e2e/workload.sh' </dev/null
e2e_finish $?
