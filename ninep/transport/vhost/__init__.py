"""A vhost-user back-end library: guest memory and the split virtqueue, for any device."""
