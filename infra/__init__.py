"""What runs the pipeline beyond one machine: the Kubernetes manifests rendered from the project's configs."""
