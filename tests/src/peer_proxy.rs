//! A TCP proxy in front of one node's peer port, which the nemesis uses to
//! partition the network on loopback.
//!
//! Every node is advertised to its peers at its proxy's port, so all Raft
//! traffic *to* a node (messages, snapshots, forwarded client requests)
//! passes through that node's proxy. The proxy knows which node opened each
//! connection (see [`crate::socket_owner`]) and can be told to cut the
//! links from some nodes: it closes their open connections and refuses new
//! ones until told otherwise. Cutting A→B at B's proxy and B→A at A's proxy is a
//! symmetric partition; cutting one of them alone is a one-way one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::Pids;

/// One proxy: listens on `port`, forwards to the node's real peer port.
#[derive(Debug)]
pub struct PeerProxy {
    /// The node behind this proxy.
    pub node: u64,
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Nodes whose connections to this node are cut.
    cut: BTreeSet<u64>,
    /// Open connections: who opened it, and the task piping it.
    open: Vec<(Option<u64>, AbortHandle)>,
    /// Connections whose caller could not be identified.
    unidentified: u64,
}

impl PeerProxy {
    /// Starts a proxy for `node` on a free loopback port, forwarding to
    /// `127.0.0.1:target`. `pids` names the processes that may connect.
    pub fn start(node: u64, target: u16, pids: Pids) -> anyhow::Result<PeerProxy> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", crate::free_port()?))?;
        std_listener.set_nonblocking(true)?;
        let listen_addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener)?;
        let state = Arc::new(Mutex::new(State::default()));
        let accept = tokio::spawn(accept_loop(
            listener,
            listen_addr,
            target,
            pids,
            state.clone(),
        ));
        Ok(PeerProxy {
            node,
            port: listen_addr.port(),
            state,
            accept,
        })
    }

    /// Sets which nodes' links to this node are cut: their open
    /// connections are closed and new ones refused; links not in `from`
    /// work again.
    pub fn set_cut(&self, from: &BTreeSet<u64>) {
        let mut st = lock(&self.state);
        st.cut = from.clone();
        let any = !from.is_empty();
        st.open.retain(|(caller, task)| {
            let doomed = match caller {
                Some(c) => from.contains(c),
                None => any,
            };
            if doomed {
                task.abort();
            }
            !doomed && !task.is_finished()
        });
    }

    /// How many connections came from a process the proxy could not name.
    pub fn unidentified(&self) -> u64 {
        lock(&self.state).unidentified
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, task) in lock(&self.state).open.drain(..) {
            task.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    listen_addr: SocketAddr,
    target: u16,
    pids: Pids,
    state: Arc<Mutex<State>>,
) {
    loop {
        let Ok((inbound, caller)) = listener.accept().await else {
            continue;
        };
        let owner = crate::socket_owner::owner(caller, listen_addr, &pids.all());
        let mut st = lock(&state);
        if owner.is_none() {
            st.unidentified += 1;
        }
        // While anything is cut, a caller we cannot name is refused: better
        // a partition slightly too wide than one with a hole in it.
        let refused = match owner {
            Some(id) => st.cut.contains(&id),
            None => !st.cut.is_empty(),
        };
        if refused {
            continue; // dropping `inbound` closes it
        }
        let task = tokio::spawn(pipe(inbound, target));
        st.open.retain(|(_, t)| !t.is_finished());
        st.open.push((owner, task.abort_handle()));
    }
}

async fn pipe(mut inbound: TcpStream, target: u16) {
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
