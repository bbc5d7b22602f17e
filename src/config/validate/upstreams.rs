//! `[upstreams.NAME]`: addresses, SNI, CA, client certificate, timeouts.

use super::*;

impl Validator<'_> {
    pub(super) fn upstream(&mut self, name: &str, s: &S<RawUpstream>) -> Option<Upstream> {
        let r = s.get_ref();
        let k = |f: &str| format!("upstreams.{name}.{f}");
        let mut addrs = Vec::new();
        if r.addrs.get_ref().is_empty() {
            self.err(
                r.addrs.span(),
                k("addrs"),
                "lists no address; add at least one \"host:port\"",
            );
        }
        for (i, a) in r.addrs.get_ref().iter().enumerate() {
            match a.get_ref().parse::<SocketAddr>() {
                Ok(sa) => addrs.push(sa),
                Err(_) => match a.get_ref().to_socket_addrs() {
                    Ok(mut it) => match it.next() {
                        Some(sa) => addrs.push(sa),
                        None => self.err(
                            a.span(),
                            format!("upstreams.{name}.addrs[{i}]"),
                            format!("{:?} resolves to no address", a.get_ref()),
                        ),
                    },
                    Err(e) => self.err(
                        a.span(),
                        format!("upstreams.{name}.addrs[{i}]"),
                        format!(
                            "{:?} is not host:port or does not resolve: {e}",
                            a.get_ref()
                        ),
                    ),
                },
            }
        }
        if r.sni.get_ref().is_empty()
            || rustls::pki_types::ServerName::try_from(r.sni.get_ref().as_str()).is_err()
        {
            self.err(r.sni.span(), k("sni"), format!("{:?} is not a valid TLS server name; use the name in the backend's certificate", r.sni.get_ref()));
        }
        let ca = self.ca(&r.ca, &k("ca"), format!("upstream.{name}.ca"));
        let client = self.cert_and_key(
            &r.client_cert,
            &r.client_key,
            &k("client_cert"),
            &k("client_key"),
            format!("upstream.{name}.client"),
        );
        let ms = |v: &Option<S<u64>>, d: u64| v.as_ref().map(|v| *v.get_ref()).unwrap_or(d);
        for (f, v) in [
            ("connect_timeout_ms", &r.connect_timeout_ms),
            ("read_timeout_ms", &r.read_timeout_ms),
        ] {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    self.err(v.span(), k(f), "must be greater than 0");
                }
            }
        }
        let (_, ca_certs) = ca?;
        let (client_key, _, _) = client?;
        let tls = match crate::tls::upstream_client_config(&ca_certs, client_key) {
            Ok(t) => t,
            Err(e) => {
                self.err(r.ca.span(), k("ca"), e.to_string());
                return None;
            }
        };
        if addrs.is_empty() {
            return None;
        }
        let addrs_down = addrs
            .iter()
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        Some(Upstream {
            name: name.to_string(),
            addrs,
            sni: r.sni.get_ref().clone(),
            tls: Arc::new(tls),
            connect_timeout: Duration::from_millis(ms(&r.connect_timeout_ms, 2000)),
            read_timeout: Duration::from_millis(ms(&r.read_timeout_ms, 30000)),
            next: AtomicUsize::new(0),
            down_until: addrs_down,
        })
    }
}
