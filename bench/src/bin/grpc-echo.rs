//! `grpc-echo`: the transport reference for the load driver. On `StartWorker`
//! it dials the given endpoint's `BeamFnData/Data`, as a Beam worker does, and
//! sends every message straight back, with no Beam logic. Drive it with
//! `fnapi-loadgen run --target echo`.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on (loopback by default: this is a benchmark tool).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let addr = SocketAddr::new(cli.bind, cli.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("grpc-echo listening on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    beam_bench::ceiling::serve(listener, shutdown).await?;
    Ok(())
}
