# One image for every component; each container runs its own `python -m <package>`.
# PYTHON_IMAGE: the base with Python 3.11; the official image by default (CI, which reaches no registry, builds
# a stand-in from Debian: deploy/standins/).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies in their own layer: it changes only when pyproject.toml does.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY . .
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOST=0.0.0.0 INSTANCE_HOST=""
RUN useradd --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/app
USER app
EXPOSE 8080
CMD ["python", "-m", "gateway"]
