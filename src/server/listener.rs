//! Creating the listening sockets before any shard starts, so that bind
//! errors are reported at once and port 0 resolves to one shared public port.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::OwnedFd;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ServerConfig;

/// Backlog of each listening socket.
const BACKLOG: i32 = 4096;

pub struct Listeners {
    /// One socket per shard on the public port (SO_REUSEPORT group).
    pub public: Vec<OwnedFd>,
    pub public_addr: SocketAddr,
    /// Each shard's own port.
    pub own: Vec<OwnedFd>,
    pub shard_ports: Vec<u16>,
    /// One socket per shard on the REST port (SO_REUSEPORT group).
    pub http: Vec<OwnedFd>,
    pub http_addr: SocketAddr,
}

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

fn local_port(socket: &Socket) -> std::io::Result<u16> {
    let std: &StdListener = &socket.try_clone()?.into();
    Ok(std.local_addr()?.port())
}

/// Binds the public port once per shard and each shard's own port.
pub fn bind_all(config: &ServerConfig) -> anyhow::Result<Listeners> {
    let shards = config.cpus.len();
    let mut public = Vec::with_capacity(shards);
    let mut public_addr = SocketAddr::new(config.bind, config.port);
    for i in 0..shards {
        let socket =
            listen(public_addr, true).with_context(|| format!("binding the binary port {public_addr}"))?;
        if i == 0 {
            public_addr.set_port(local_port(&socket)?);
        }
        public.push(OwnedFd::from(socket));
    }
    let mut own = Vec::with_capacity(shards);
    let mut shard_ports = Vec::with_capacity(shards);
    for i in 0..shards {
        let port = match config.shard_port_base {
            0 => 0,
            base => u16::try_from(usize::from(base) + i).context("shard port beyond 65535")?,
        };
        let addr = SocketAddr::new(config.bind, port);
        let socket =
            listen(addr, false).with_context(|| format!("binding the port of shard {i} ({addr})"))?;
        shard_ports.push(local_port(&socket)?);
        own.push(OwnedFd::from(socket));
    }
    let mut http = Vec::with_capacity(shards);
    let mut http_addr = SocketAddr::new(config.bind, config.http_port);
    for i in 0..shards {
        let socket = listen(http_addr, true).with_context(|| format!("binding the HTTP port {http_addr}"))?;
        if i == 0 {
            http_addr.set_port(local_port(&socket)?);
        }
        http.push(OwnedFd::from(socket));
    }
    Ok(Listeners {
        public,
        public_addr,
        own,
        shard_ports,
        http,
        http_addr,
    })
}
