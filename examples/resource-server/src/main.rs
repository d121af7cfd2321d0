//! `dpop-resource-server`: an example resource server on dpop-server. It accepts requests
//! with a JWT access token (checked against a JWKS file or URL) bound to the DPoP proof's key
//! by `cnf.jkt`, and answers any path with what it verified, as JSON. Several instances share
//! replay state through Redis (`--redis`; a Redis Cluster with `--redis-cluster`; a
//! Sentinel-managed primary with `--redis-sentinel` and `--redis-master`) and accept each
//! other's nonces when they share the nonce secret (`DPOP_NONCE_SECRET` or
//! `--nonce-secret-file`, never the command line).
//! Behind a reverse proxy, `--trusted-proxy` and `--proxy-headers` name the proxy and the one
//! header family it overwrites; `--allowed-host` limits the hosts those headers may name.

mod jwt;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Json;
use axum::http::{Method, Uri};
use axum::serve::ListenerExt;
use clap::{Parser, ValueEnum};
use dpop_server::{
    Dpop, DpopLayer, HmacNonces, MemoryReplayStore, Preset, ProxyHeaders, PublicUrl,
    RedisConnectError, RedisOptions, RedisReplayStore, RedisTarget, ReplayFailure, ReplayStore,
    Verifier,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The environment variable that may hold the nonce secret.
const NONCE_SECRET_ENV: &str = "DPOP_NONCE_SECRET";

// The field docs are clap's --help text, read in a terminal, where <...> around a URL would
// show.
#[allow(rustdoc::bare_urls)]
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed on start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The public base URL clients use (e.g. https://api.example.com/prefix): scheme, host,
    /// port and path prefix of every request's htu.
    #[arg(long)]
    public_url: String,
    /// A reverse proxy (its address as this server sees the connection) whose forwarding
    /// headers of the --proxy-headers family are trusted; repeatable.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<IpAddr>,
    /// The header family the trusted proxies set, overwriting a client's: forwarded (RFC
    /// 7239) or x-forwarded (X-Forwarded-Proto/Host/Port). The other family is ignored.
    #[arg(long, value_enum, default_value_t = ProxyHeadersArg::None)]
    proxy_headers: ProxyHeadersArg,
    /// A host the trusted proxies' headers may name: HOST (any port) or HOST:PORT;
    /// repeatable. Others are refused. Without it, any host they name is used.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// JWKS with the access-token signing keys: a file, or an http(s) URL fetched at start.
    #[arg(long)]
    jwks: String,
    /// Required `iss` of access tokens.
    #[arg(long)]
    issuer: Option<String>,
    /// Required `aud` of access tokens.
    #[arg(long)]
    audience: Option<String>,
    /// Verification preset.
    #[arg(long, value_enum, default_value_t = PresetArg::Rfc9449)]
    preset: PresetArg,
    /// Redis URL for replay state shared by instances (redis://127.0.0.1:6379); without it,
    /// replay state is in this process's memory. A URL with a password belongs in
    /// `DPOP_REDIS_URL`, not on the command line, which other users can read.
    #[arg(long, env = "DPOP_REDIS_URL", hide_env_values = true)]
    redis: Option<String>,
    /// A Redis Cluster node to discover the cluster from (redis://host:port); repeatable.
    /// In `DPOP_REDIS_CLUSTER`, comma-separated, when the URLs hold a password.
    #[arg(
        long = "redis-cluster",
        env = "DPOP_REDIS_CLUSTER",
        hide_env_values = true,
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    redis_cluster: Vec<String>,
    /// A Sentinel to ask for the primary of --redis-master (redis://host:port); repeatable.
    /// In `DPOP_REDIS_SENTINELS`, comma-separated, when the URLs hold a password.
    #[arg(long = "redis-sentinel", env = "DPOP_REDIS_SENTINELS", hide_env_values = true,
          value_delimiter = ',', conflicts_with_all = ["redis", "redis_cluster"],
          requires = "redis_master")]
    redis_sentinels: Vec<String>,
    /// The master name the Sentinels monitor.
    #[arg(long, requires = "redis_sentinels")]
    redis_master: Option<String>,
    /// The Sentinel-managed primary's credentials and database as a URL whose host is
    /// ignored (redis://user:password@primary/0): set it in `DPOP_REDIS_PRIMARY_AUTH`.
    #[arg(
        long,
        env = "DPOP_REDIS_PRIMARY_AUTH",
        hide_env_values = true,
        requires = "redis_sentinels"
    )]
    redis_primary_auth: Option<String>,
    /// Replicas that must acknowledge each replay record (WAIT) before a proof is accepted;
    /// the number of replicas each primary has closes the window in which a failover loses
    /// records (and refuses proofs while a replica is missing); 0 (default) does not wait.
    #[arg(long, default_value_t = 0)]
    redis_replica_acks: u32,
    /// Longest a Redis check may take, in milliseconds.
    #[arg(long, default_value_t = 500)]
    redis_timeout_ms: u64,
    /// Accept proofs unrecorded while Redis fails (default: refuse them with 503).
    #[arg(long)]
    replay_fail_open: bool,
    /// Run on a Redis whose maxmemory-policy is not noeviction, or whose policy cannot be
    /// read (CONFIG renamed or not permitted): replay records may then be evicted early.
    #[arg(long)]
    redis_accept_eviction: bool,
    /// File holding the nonce secret (at least 32 bytes; surrounding white space ignored).
    /// Without it, `DPOP_NONCE_SECRET` is read; without either, no nonces are issued.
    #[arg(long)]
    nonce_secret_file: Option<PathBuf>,
    /// Nonce rotation interval in seconds.
    #[arg(long, default_value_t = 60)]
    nonce_interval: u64,
    /// Require nonces (the fapi2 preset always does).
    #[arg(long)]
    require_nonce: bool,
    /// Without a Redis: the most proofs the in-memory replay store remembers at once (each
    /// until its iat window ends; when full, new proofs are refused, never forgotten early).
    /// Size it for the request rate times the iat window (65 s with the rfc9449 preset).
    #[arg(long, default_value_t = NonZeroUsize::new(100_000).expect("non-zero"))]
    replay_capacity: NonZeroUsize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProxyHeadersArg {
    /// No forwarding header is trusted.
    None,
    /// `Forwarded` (RFC 7239).
    Forwarded,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port`.
    XForwarded,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    Rfc9449,
    Fapi2,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let jwks = load_jwks(&args.jwks).await?;
    let tokens = jwt::JwtTokens::from_jwks(&jwks, args.issuer.clone(), args.audience.clone())
        .with_context(|| format!("reading the JWKS {}", args.jwks))?;

    let preset = match args.preset {
        PresetArg::Rfc9449 => Preset::Rfc9449,
        PresetArg::Fapi2 => Preset::Fapi2,
    };
    let public_url = public_url(&args)?;
    let mut builder = Verifier::builder(preset)
        .public_url(public_url)
        .require_nonces(args.require_nonce)
        // Replay state in this process, unless a Redis replaces it below.
        .replay_store(Arc::new(MemoryReplayStore::new(args.replay_capacity)))
        .replay_failure(if args.replay_fail_open {
            ReplayFailure::Open
        } else {
            ReplayFailure::Closed
        });
    if let Some(secret) = nonce_secret(&args)? {
        builder = builder.nonces(HmacNonces::new(
            &secret,
            Duration::from_secs(args.nonce_interval),
        )?);
    }
    // Without Redis, the Verifier's own in-memory store.
    if let Some(target) = redis_target(&args) {
        let options = RedisOptions {
            timeout: Duration::from_millis(args.redis_timeout_ms),
            accept_eviction: args.redis_accept_eviction,
            replica_acks: args.redis_replica_acks,
            ..RedisOptions::default()
        };
        let store = match RedisReplayStore::connect_to(&target, options).await {
            Ok(store) => store,
            Err(
                e @ (RedisConnectError::Evicting { .. }
                | RedisConnectError::PolicyUnreadable { .. }),
            ) => {
                bail!("connecting to Redis: {e} (here: --redis-accept-eviction)")
            }
            Err(e) => return Err(anyhow::Error::new(e).context("connecting to Redis")),
        };
        let replay: Arc<dyn ReplayStore> = Arc::new(store);
        builder = builder.replay_store(replay);
    }
    let verifier = Arc::new(builder.build()?);

    let app = axum::Router::new()
        .fallback(resource)
        .layer(DpopLayer::new(verifier, Arc::new(tokens)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    // The one line on standard output: tests and scripts read the bound address from it.
    println!("listening on {}", listener.local_addr()?);
    // Without TCP_NODELAY a response written in more than one segment waits out the client's
    // delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The Redis that holds replay state, from --redis, --redis-cluster or --redis-sentinel.
fn redis_target(args: &Args) -> Option<RedisTarget> {
    if let Some(url) = &args.redis {
        return Some(RedisTarget::Single { url: url.clone() });
    }
    if !args.redis_cluster.is_empty() {
        return Some(RedisTarget::Cluster {
            seeds: args.redis_cluster.clone(),
        });
    }
    let master_name = args.redis_master.clone()?;
    Some(RedisTarget::Sentinel {
        sentinels: args.redis_sentinels.clone(),
        master_name,
        primary_auth: args.redis_primary_auth.clone(),
    })
}

/// The public URL with the trusted proxies, their header family and the allowed hosts; each
/// of those settings is refused without the others it needs.
fn public_url(args: &Args) -> anyhow::Result<PublicUrl> {
    let url = PublicUrl::new(&args.public_url)?;
    let headers = match args.proxy_headers {
        ProxyHeadersArg::None => None,
        ProxyHeadersArg::Forwarded => Some(ProxyHeaders::Forwarded),
        ProxyHeadersArg::XForwarded => Some(ProxyHeaders::XForwarded),
    };
    match (headers, args.trusted_proxies.is_empty()) {
        (None, true) if args.allowed_hosts.is_empty() => Ok(url),
        (None, true) => bail!("--allowed-host needs --trusted-proxy and --proxy-headers"),
        (None, false) => bail!(
            "--trusted-proxy needs --proxy-headers forwarded|x-forwarded: the header family the proxy sets, overwriting a client's"
        ),
        (Some(_), true) => bail!("--proxy-headers needs --trusted-proxy"),
        (Some(headers), false) => Ok(url
            .trust_proxies(headers, args.trusted_proxies.iter().copied())
            .allowed_hosts(&args.allowed_hosts)?),
    }
}

/// Every path answers with what the layer verified.
async fn resource(method: Method, uri: Uri, Dpop(verified): Dpop) -> Json<Value> {
    let token = verified.token.map(|t| t.claims).unwrap_or_default();
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "jkt": verified.jkt,
        "alg": verified.proof.alg.as_str(),
        "sub": token["sub"],
    }))
}

async fn load_jwks(source: &str) -> anyhow::Result<Vec<u8>> {
    if source.starts_with("https://") || source.starts_with("http://") {
        let response = reqwest::get(source)
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching the JWKS {source}"))?;
        Ok(response.bytes().await?.to_vec())
    } else {
        tokio::fs::read(source)
            .await
            .with_context(|| format!("reading the JWKS file {source}"))
    }
}

fn nonce_secret(args: &Args) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    let raw = match &args.nonce_secret_file {
        Some(path) => Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading the nonce secret file {}", path.display()))?,
        ),
        None => match std::env::var_os(NONCE_SECRET_ENV) {
            Some(value) => Zeroizing::new(value.into_encoded_bytes()),
            None => return Ok(None),
        },
    };
    let trimmed = Zeroizing::new(raw.trim_ascii().to_vec());
    if trimmed.is_empty() {
        bail!("the nonce secret is empty");
    }
    Ok(Some(trimmed))
}
