//! Which process opened a loopback TCP connection (Linux only).
//!
//! Every node reaches a peer at one URL, so a proxy in front of a node's
//! peer port sees connections from all the other nodes, all from
//! 127.0.0.1. To cut the link from node A to node B but not from C to B, the
//! proxy must know who is calling: it finds the caller's socket in
//! `/proc/net/tcp` by its two ports, and the process that holds that socket
//! among the cluster's pids by their open file descriptors.

use std::net::SocketAddr;

/// The node id of the process (among `pids`: (pid, node id)) whose socket
/// is the client end of the connection `caller` → `listener`.
pub fn owner(caller: SocketAddr, listener: SocketAddr, pids: &[(u32, u64)]) -> Option<u64> {
    let inode = client_socket_inode(caller.port(), listener.port())?;
    let want = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, id)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .map(|target| target.as_os_str() == want.as_str())
                    .unwrap_or(false)
            })
            .then_some(*id)
    })
}

/// The inode of the socket whose local port is `local` and remote port is
/// `remote`, from `/proc/net/tcp` and `/proc/net/tcp6`.
fn client_socket_inode(local: u16, remote: u16) -> Option<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let (l, r, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
                (port_of(l)? == local && port_of(r)? == remote)
                    .then(|| inode.parse().ok())
                    .flatten()
                    .filter(|i| *i != 0)
            })
        })
}

/// `0100007F:C350` → 50000.
fn port_of(addr: &str) -> Option<u16> {
    let (_, port) = addr.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_connection_is_the_process_that_opened_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server_end, caller) = listener.accept().unwrap();
        assert_eq!(caller, client.local_addr().unwrap());
        let me = std::process::id();
        assert_eq!(owner(caller, addr, &[(1, 9), (me, 7)]), Some(7));
        assert_eq!(owner(caller, addr, &[(1, 9)]), None);
    }

    #[test]
    fn ports_are_hex_after_the_colon() {
        assert_eq!(port_of("0100007F:C350"), Some(50000));
        assert_eq!(port_of("00000000000000000000000001000000:0050"), Some(80));
    }
}
