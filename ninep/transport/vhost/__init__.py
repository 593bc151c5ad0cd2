"""A vhost-user back-end library: serve any virtio device to QEMU from Python.

The layers, each only looking down:

* :mod:`.messages` — the wire format, sans-IO: message types, header and
  payload structs, feature bits, decode/encode.
* :mod:`.channel` — the Unix socket: whole messages in with their SCM_RIGHTS
  fds, replies and REPLY_ACKs out.
* :mod:`.memory` — guest RAM regions, mmap'd from the front end's fds, with
  bounds-checked views by guest-physical or front-end address.
* :mod:`.virtqueue` — the device side of a split virtqueue: pops chains, hands
  each to a request handler as readable views plus a sink over the writable
  ones, and completes it into the used ring.
* :mod:`.device` — a generic device: features, protocol features, config
  space, queues, and the state machine of the control messages.
* :mod:`.listener` — the listening socket and the one-front-end-at-a-time
  accept loop.

A device is then a handler per queue and a few arguments: see :mod:`.rng`
(virtio-rng) and :mod:`ninep.transport.vhost_user` (virtio-9p).
"""
