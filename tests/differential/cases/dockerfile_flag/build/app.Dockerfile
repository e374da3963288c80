FROM busybox
COPY . /ctx
COPY build/app.Dockerfile /the-dockerfile
