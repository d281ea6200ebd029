"""One proxy training of a layout: `config` (ProxyConfig, presets), `run` (run_proxy, ProxyResult)."""
