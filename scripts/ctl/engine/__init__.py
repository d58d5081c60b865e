"""The container engine under `./mlflowctl`: Docker where it runs, otherwise podman
(MLFLOW_BUNDLE_ENGINE=docker|podman chooses where both run; `./mlflowctl install docker` starts a
dockerd where none runs).

`docker-compose.production.yml` runs unchanged in either, driven by the real Compose binary from
the lock file. Docker runs health checks itself. With podman:
- `podman system service` serves the Docker API on a socket of ours (DOCKER_HOST for Compose);
- health checks are run by a ticker of ours (`python -m ctl.engine tick`), since podman runs
  them from systemd timers and there is no systemd here: it runs `podman healthcheck run` on each
  container's interval (every `start_interval` while the container is starting), and exits once
  the project has had no running container for a minute.

Images: each `${NAME_IMAGE:-official:pin}` in the compose file is used if present, else pulled.
Where the registry cannot be reached, a local stand-in is built from Debian packages, on a
debootstrap base (docker/standins/NAME, or the stage NAME of a shared Containerfile such as
docker/standins/exporters), and recorded in var/images.env, which every Compose call reads after
.env. Our own image is built from docker/Dockerfile whenever its inputs change (their hash is a
label of the image). Builds that pip-install get this machine's CA bundle in a throw-away build
context (Docker's classic builder has no -v and no --secret).

Modules: core (paths, Engine, daemons), detect (which engine; podman setup), compose, images
(stand-ins and our images), ticker (podman's health checks).
"""

# One namespace for the call sites (`from ctl import engine; engine.up(...)`): the modules below are
# split by concern, and each name is defined in exactly one of them.
from ctl.engine.compose import *  # noqa: F403
from ctl.engine.core import *  # noqa: F403
from ctl.engine.detect import *  # noqa: F403
from ctl.engine.images import *  # noqa: F403
from ctl.engine.ticker import *  # noqa: F403
