# syntax=docker/dockerfile:1
# syncd's container image: a virtual environment on a Python base, run as a non-root user.
#
#   podman build -t registry.example.com/syncd:0.2.0 .
#   podman build --build-arg BASE=registry.example.com/debian-python:bookworm \
#                --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t ... .
#
# BASE: any image with python3 (3.11 or later) and its venv module: the official slim
# image by default, or one made from Debian packages (python3, python3-venv,
# ca-certificates). For a release, give it by digest, so the build takes exactly that
# image whatever the tag points at later (scripts/build-test-image.sh does):
#   --build-arg BASE=docker.io/library/python:3.11-slim@sha256:<digest>
# The CA bundle secret is for builds behind a TLS-intercepting proxy: pip trusts it while
# installing, and it is never written into a layer. (`RUN --mount` needs BuildKit's
# Dockerfile syntax 1.2 or later, hence the first line; podman and buildah have it.)
#
# Dependencies come from requirements.lock: exact versions, each file checked against its
# sha256 (pip --require-hashes), setuptools included, so syncd itself builds with no
# other download. Regenerate it after a change to pyproject.toml's dependencies:
#   pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
#     --no-emit-find-links --output-file requirements.lock pyproject.toml requirements-build.in
ARG BASE=docker.io/library/python:3.11-slim

FROM ${BASE} AS build
# A virtual environment: Debian's python3 refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/syncd
COPY requirements.lock pyproject.toml README.md LICENSE /src/
COPY syncd /src/syncd
# The Kubernetes client ships an asyncio copy of itself (kubernetes.aio, 68 MB, with
# aiohttp); syncd uses the synchronous client only, so the copy and aiohttp are left out.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/syncd/bin/pip install --no-cache-dir --disable-pip-version-check \
       --require-hashes -r /src/requirements.lock \
    && /opt/syncd/bin/pip install --no-cache-dir --disable-pip-version-check \
       --no-deps --no-build-isolation /src \
    && /opt/syncd/bin/pip uninstall --yes --disable-pip-version-check aiohttp aiohttp-retry \
       aiohappyeyeballs aiosignal frozenlist multidict propcache yarl \
    && rm -rf /opt/syncd/lib/python3*/site-packages/kubernetes/aio \
    && /opt/syncd/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE}
COPY --from=build /opt/syncd /opt/syncd
# Not root, and no fixed identity needed: OpenShift's restricted SCC runs it as an
# arbitrary UID with group 0, which can read everything here.
USER 65532:0
ENV PATH=/opt/syncd/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["syncd"]
CMD ["--help"]
