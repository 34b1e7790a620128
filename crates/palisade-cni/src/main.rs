//! `palisade-cni`: executed by the container runtime with the CNI_*
//! environment and the network config on stdin.

fn main() {
    palisade_cni::main()
}
