//! Generates the gRPC code for every `.proto` in this crate. A fresh machine has
//! no `protoc`, so the vendored one from `protoc-bin-vendored` is used unless
//! `PROTOC` is set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        // A snapshot stream sends slices of one dump: no copy per message.
        .bytes(".etcdserverpb.SnapshotResponse.blob")
        .compile_protos(
            &[
                "proto/etcd/kv.proto",
                "proto/etcd/rpc.proto",
                "proto/keel/raft.proto",
                "proto/keel/agent.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
