#!/bin/sh
# Same shape as SeaweedFS's image entrypoint: the arguments go to `weed` (here: the moto stand-in).
# The stand-in runs as root, as chrislusf/seaweedfs:3.97 does.
exec /usr/bin/weed "$@"
