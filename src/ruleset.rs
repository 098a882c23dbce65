//! Our nftables table as data (placeholder; being written).
