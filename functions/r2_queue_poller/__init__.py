"""R2QueuePollerFunction: pulls R2 event notifications from a Cloudflare Queue and promotes their manifests."""
