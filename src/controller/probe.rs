//! The runbook's "test connectivity from the cluster to the Git repository", done by
//! fluxmedic for a source that cannot be reached: DNS, then TCP, then (https) a TLS handshake
//! verified against the system's roots. No credentials are sent and nothing is fetched; the
//! result becomes evidence, so a person knows whether it is the network or the Git service.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

const STEP_TIMEOUT: Duration = Duration::from_secs(4);

/// Probe results per URL and the probes running. Probes run off the evaluation pass (a host
/// that drops packets takes seconds to give up on, exactly the case probed): a pass uses what
/// is known and starts what is missing or stale; a finished probe wakes the next pass.
#[derive(Default)]
pub struct ProbeCache {
    found: HashMap<String, (Instant, String)>,
    running: HashSet<String>,
}

impl ProbeCache {
    /// What is known about `urls` (stale results too: better than nothing), and which to probe
    /// now — missing or older than `ttl`, not already running, at most `max` running at once.
    /// The ones returned are marked running.
    pub fn plan(
        &mut self,
        urls: &[String],
        now: Instant,
        ttl: Duration,
        max: usize,
    ) -> (HashMap<String, String>, Vec<String>) {
        let mut known = HashMap::new();
        let mut start = vec![];
        for u in urls {
            let fresh = match self.found.get(u) {
                Some((at, found)) => {
                    known.insert(u.clone(), found.clone());
                    now.saturating_duration_since(*at) < ttl
                }
                None => false,
            };
            if !fresh && !self.running.contains(u) && self.running.len() < max {
                self.running.insert(u.clone());
                start.push(u.clone());
            }
        }
        // Forget URLs nobody asked about for a while.
        self.found.retain(|u, (at, _)| {
            self.running.contains(u) || now.saturating_duration_since(*at) < ttl * 10
        });
        (known, start)
    }

    /// Record a finished probe. True when the finding differs from what was known.
    pub fn done(&mut self, url: String, found: String, now: Instant) -> bool {
        self.running.remove(&url);
        let changed = self.found.get(&url).is_none_or(|(_, f)| f != &found);
        self.found.insert(url, (now, found));
        changed
    }
}

/// Host, port and whether TLS is spoken, from a source URL (http, https, ssh; scp-like
/// `git@host:path` too). `None` for anything else.
pub fn endpoint(url: &str) -> Option<(String, u16, bool)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            // scp-like: [user@]host:path
            let (host, _) = url.split_once(':')?;
            let host = host.rsplit('@').next()?;
            return (!host.is_empty()).then(|| (host.to_string(), 22, false));
        }
    };
    let default = match scheme.as_str() {
        "http" => 80,
        "https" | "oci" => 443,
        "ssh" => 22,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port, scheme == "https" || scheme == "oci"))
}

/// What fluxmedic found when it tried to reach `url`, in one sentence.
pub async fn probe(url: &str) -> String {
    let Some((host, port, tls)) = endpoint(url) else {
        return format!("not probed: cannot tell host and port from {url}");
    };
    let addrs =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
        {
            Err(_) => {
                return format!(
                    "DNS lookup of {host} timed out after {}s: the network, not the Git service",
                    STEP_TIMEOUT.as_secs()
                );
            }
            Ok(Err(e)) => {
                return format!(
                    "DNS lookup of {host} failed ({e}): the name does not resolve from here"
                );
            }
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
        };
    let Some(addr) = addrs.first().copied() else {
        return format!("DNS lookup of {host} returned no address");
    };
    let stream = match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => {
            return format!(
                "{host} resolves to {}, but a TCP connection to port {port} timed out: a firewall or the network",
                addr.ip()
            );
        }
        Ok(Err(e)) => {
            return format!(
                "{host} resolves to {}, but a TCP connection to port {port} failed ({e}): nothing listens there, or it is blocked",
                addr.ip()
            );
        }
        Ok(Ok(s)) => s,
    };
    if !tls {
        return format!(
            "{host} resolves to {} and accepts TCP connections on port {port}: the network is fine, look at the Git service",
            addr.ip()
        );
    }
    match tls_handshake(&host, stream).await {
        Ok(()) => format!(
            "{host} resolves to {}, accepts TCP on port {port} and completes a verified TLS handshake: the network is fine, look at the Git service",
            addr.ip()
        ),
        Err(e) => format!(
            "{host} resolves to {} and accepts TCP on port {port}, but the TLS handshake failed ({e})",
            addr.ip()
        ),
    }
}

async fn tls_handshake(host: &str, stream: TcpStream) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await {
        Err(_) => Err(format!("no answer within {}s", STEP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_the_urls_flux_accepts() {
        assert_eq!(
            endpoint("https://github.com/org/repo.git"),
            Some(("github.com".into(), 443, true))
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8080/git/x.git"),
            Some(("127.0.0.1".into(), 8080, false))
        );
        assert_eq!(
            endpoint("ssh://git@git.example.com:2222/org/repo"),
            Some(("git.example.com".into(), 2222, false))
        );
        assert_eq!(
            endpoint("ssh://git@git.example.com/org/repo"),
            Some(("git.example.com".into(), 22, false))
        );
        assert_eq!(
            endpoint("git@github.com:org/repo.git"),
            Some(("github.com".into(), 22, false))
        );
        assert_eq!(
            endpoint("https://user:pw@[::1]:8443/x"),
            Some(("::1".into(), 8443, true))
        );
        assert_eq!(
            endpoint("oci://ghcr.io/org/app"),
            Some(("ghcr.io".into(), 443, true))
        );
        assert_eq!(endpoint("ftp://x/y"), None);
        assert_eq!(endpoint("https://:443/x"), None);
        assert_eq!(endpoint("https://h:notaport/x"), None);
    }

    #[test]
    fn the_cache_bounds_and_refreshes_probes() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let urls: Vec<String> = (0..5).map(|i| format!("https://h{i}/x")).collect();
        let mut c = ProbeCache::default();
        // Nothing known: at most `max` start; a second pass starts none of those again.
        let (known, start) = c.plan(&urls, t0, ttl, 3);
        assert!(known.is_empty());
        assert_eq!(start, urls[..3].to_vec());
        let (_, again) = c.plan(&urls, t0, ttl, 3);
        assert!(
            again.is_empty(),
            "running probes are not started twice, and the bound holds"
        );
        // One finishes: known from now on, and a slot is free for the next URL.
        assert!(c.done(urls[0].clone(), "down".into(), t0));
        let (known, start) = c.plan(&urls, t0, ttl, 3);
        assert_eq!(known.get(&urls[0]).map(String::as_str), Some("down"));
        assert_eq!(start, vec![urls[3].clone()]);
        // The same finding again is no change (no extra pass); a new one is.
        assert!(!c.done(urls[0].clone(), "down".into(), t0));
        // Stale after the ttl: still reported, and probed again.
        let later = t0 + ttl + Duration::from_secs(1);
        for u in &urls[1..4] {
            c.done(u.clone(), "x".into(), t0);
        }
        let (known, start) = c.plan(&urls[..1], later, ttl, 3);
        assert_eq!(known.get(&urls[0]).map(String::as_str), Some("down"));
        assert_eq!(start, vec![urls[0].clone()]);
        assert!(c.done(urls[0].clone(), "up".into(), later));
        // Forgotten once nobody asked for ten ttls.
        let much_later = later + ttl * 11;
        c.plan(&[], much_later, ttl, 3);
        assert!(c.found.is_empty());
    }

    #[tokio::test]
    async fn each_step_says_where_it_stopped() {
        // Nothing listens: TCP fails, and no credentials or data are ever sent.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let r = probe(&format!("http://127.0.0.1:{port}/x.git")).await;
        assert!(
            r.contains("TCP connection to port") && r.contains("failed"),
            "{r}"
        );
        // Something listens, plain HTTP: reachable.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        let r = probe(&format!("http://127.0.0.1:{port}/x.git")).await;
        assert!(
            r.contains("accepts TCP connections") && r.contains("network is fine"),
            "{r}"
        );
        // https to something that does not speak TLS: the handshake fails, and says so.
        tokio::spawn(async move {
            while let Ok((mut s, _)) = open.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
            }
        });
        let r = probe(&format!("https://127.0.0.1:{port}/x.git")).await;
        assert!(r.contains("TLS handshake failed"), "{r}");
        // A name that does not resolve.
        let r = probe("https://no-such-host.invalid/x.git").await;
        assert!(r.contains("DNS lookup of no-such-host.invalid"), "{r}");
    }
}
