//! Wire types of the switch: the gRPC services and Kafka event envelopes
//! generated from `proto/switch/v1`, and (with the `domain` feature) the
//! conversions between the wire enums and switch-core's closed vocabularies
//! (evidence, reversal reason, reconciliation outcome), written once here so
//! every service's edge uses the same table. Messages are converted into
//! domain types at each service's edge.

/// Version 1 of the switch's API.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("switch.v1");
}

#[cfg(feature = "domain")]
pub mod domain;

/// Encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switch_descriptor");
