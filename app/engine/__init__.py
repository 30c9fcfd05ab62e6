"""The engine layer: plain functions over a docker.DockerClient, one module per concern."""
