//! Wire types of the switch: the gRPC services and Kafka event envelopes
//! generated from `proto/switch/v1`. Nothing but generated code lives here;
//! conversion into domain types happens at each service's edge.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Version 1 of the switch's API.
pub mod v1 {
    tonic::include_proto!("switch.v1");
}

/// Encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switch_descriptor");
