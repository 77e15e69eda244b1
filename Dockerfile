# One image for every Keel service and for the provisioning step. The process is the container's command, e.g.
#   command: ["node", "services/tenant/dist/main.js"]          (docker-compose.yml, infra/k8s)
#   node services/tenant/dist/main.js --provision-only         (the provisioning step, with the admin URL)
# and, for a plain `docker run`, the SERVICE build argument (a name in services.manifest.json; default gateway).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# The version package.json pins; npx fetches it (no global install, no corepack signature keys needed).
ARG PNPM=pnpm@10.34.8
WORKDIR /app
# `pnpm fetch` needs only the lockfile, so this layer stays cached until dependencies change.
COPY pnpm-lock.yaml pnpm-workspace.yaml ./
RUN npx -y ${PNPM} fetch
COPY . .
RUN npx -y ${PNPM} install --frozen-lockfile --offline \
 && npx -y ${PNPM} run build \
 # Drop the build-only dependencies (TypeScript, jest) from what the runtime image copies.
 && npx -y ${PNPM} install --frozen-lockfile --offline --prod --config.confirmModulesPurge=false

FROM ${NODE_IMAGE}
ARG SERVICE=gateway
ENV NODE_ENV=production \
    SERVICE=${SERVICE}
WORKDIR /app
COPY --from=build /app /app
USER node
# No EXPOSE: each service's port is its `port` in services.manifest.json, which docker-compose.yml
# and infra/k8s (generated from it) publish.
# exec: node becomes PID 1 and receives SIGTERM itself, so the service shuts down cleanly.
CMD ["sh", "-c", "exec node services/${SERVICE}/dist/main.js"]
