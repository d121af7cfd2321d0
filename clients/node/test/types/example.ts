// Compiled (never run) by test/types.test.js with tsc --noEmit: the README's uses of the
// package, typed, and a few mistakes the types must refuse (@ts-expect-error).
import {
  AgentClient,
  DpopAgentError,
  KeyNotFoundError,
  LockedError,
  UnsafeSocketError,
  dpopFetch,
  type KeyDescription,
} from "dpop-agent-client";

export async function example(token: string): Promise<void> {
  const response: Response = await dpopFetch("https://api.example.com/v1/items", {}, { key: "api", token });
  const items: unknown = await response.json();
  void items;

  const agent = await AgentClient.connect({ timeoutMs: 10_000 });
  try {
    const keys: KeyDescription[] = await agent.listKeys();
    const jkt: string = keys[0].jkt;
    const proof: string = await agent.signProof("api", { htm: "GET", htu: "https://api.example.com/", accessToken: token });
    await agent.reportNonce("api", "https://api.example.com", "nonce");
    const made = await agent.generateKey("new", { alg: "ES256", policy: { allow_origins: ["https://api.example.com"] } });
    const locked: boolean = (await agent.status()).locked;
    void [jkt, proof, made.label, locked];
    await dpopFetch("https://as.example.com/token", { method: "POST", body: new URLSearchParams({ grant_type: "client_credentials" }) }, { key: "api", agent });
  } catch (e) {
    if (e instanceof KeyNotFoundError) {
      const code: "key_not_found" = e.code;
      void code;
    } else if (e instanceof UnsafeSocketError) {
      const where: string = e.path + e.problem;
      void where;
    } else if (e instanceof DpopAgentError && e.code === "locked") {
      void LockedError.code;
    }
  } finally {
    agent.close();
  }

  // @ts-expect-error the key is required
  await dpopFetch("https://api.example.com/", {}, { token });
  // @ts-expect-error redirects are never followed
  await dpopFetch("https://api.example.com/", { redirect: "follow" }, { key: "api" });
  // @ts-expect-error connect, not new
  new AgentClient();
  // @ts-expect-error htm and htu are required
  await AgentClient.connect().then((a) => a.signProof("api", { htu: "https://a.example/" }));
}
