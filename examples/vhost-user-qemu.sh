#!/bin/sh
# Serve a host directory to a QEMU (>= 10.2) guest as a virtio-9p device over vhost-user.
#
#   EXPORT=/srv/share TAG=hostshare ./vhost-user-qemu.sh -kernel bzImage -append ... [more QEMU args]
#
# ninep creates the socket and waits; QEMU connects to it as the front end. QEMU
# needs shared guest RAM (memory-backend-memfd,share=on) so ninep can map it.
# In the guest:  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$TAG" /mnt
set -eu

EXPORT=${EXPORT:-/srv/share}
TAG=${TAG:-hostshare}
SOCK=${SOCK:-/run/ninep.sock}
MEM=${MEM:-2G}
NINEP=${NINEP:-ninep}  # may be a command with arguments, e.g. "python3 -m ninep"
QEMU=${QEMU:-qemu-system-x86_64}

# virtio-9p config space = u16 tag length + the tag bytes (no NUL), at most 256 bytes.
tag_bytes=$(printf '%s' "$TAG" | wc -c)
if [ "$tag_bytes" -lt 1 ] || [ "$tag_bytes" -gt 254 ]; then
    echo "TAG must be 1 to 254 bytes (got $tag_bytes)" >&2
    exit 2
fi
config_size=$((2 + tag_bytes))

$NINEP --export "$EXPORT" --socket-path "$SOCK" --tag "$TAG" &
ninep_pid=$!
trap 'kill "$ninep_pid" 2>/dev/null; wait "$ninep_pid" 2>/dev/null' EXIT INT TERM

# Wait until ninep listens (it exits with a one-line error if the options are bad).
tries=0
until [ -S "$SOCK" ]; do
    if ! kill -0 "$ninep_pid" 2>/dev/null; then
        echo "ninep exited before creating $SOCK" >&2
        exit 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "ninep did not create $SOCK within 10 s" >&2
        exit 1
    fi
    sleep 0.1
done

"$QEMU" -enable-kvm -cpu host -smp 2 -m "$MEM" \
    -object memory-backend-memfd,id=mem,size="$MEM",share=on \
    -machine q35,memory-backend=mem \
    -chardev socket,id=vu9p,path="$SOCK" \
    -device vhost-user-test-device-pci,chardev=vu9p,virtio-id=9,num_vqs=1,vq_size=128,config_size="$config_size" \
    "$@"
