"""What every layer of muxbench shares (servers, load generator, harness, benchmarks)."""
