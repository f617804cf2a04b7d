//! How clients reach the server: its URL, a kube-rs configuration and client, a kubeconfig.
//! Plain HTTP on 127.0.0.1, no TLS and no credentials.

use std::io;
use std::path::Path;

use super::FakeApi;

impl FakeApi {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube-rs configuration pointing at this server (plain HTTP, no credentials).
    pub fn config(&self) -> kube::Config {
        // The URL is built from a socket address, so it always parses.
        let url = self.url().parse().unwrap_or_default();
        kube::Config::new(url)
    }

    /// A kube-rs client for this server. Needs a tokio runtime.
    pub fn client(&self) -> kube::Result<kube::Client> {
        kube::Client::try_from(self.config())
    }

    /// A kubeconfig file's text pointing at this server (context `fake`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }
}
