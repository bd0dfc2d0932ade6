// The relay a team would otherwise write: Express with express.raw, HMAC-SHA256 of
// the raw body checked in constant time, and an amqplib confirm channel; persistent
// messages, 200 only once RabbitMQ confirmed. scripts/bench.py measures it beside
// hookrelay (issue 24). Env: PORT, AMQP_URL, EXCHANGE, SECRET.
const crypto = require("crypto");
const express = require("express");
const amqp = require("amqplib");

async function main() {
  const conn = await amqp.connect(process.env.AMQP_URL);
  const ch = await conn.createConfirmChannel();
  await ch.assertExchange(process.env.EXCHANGE, "topic", { durable: true });
  const secret = Buffer.from(process.env.SECRET);
  const app = express();
  app.post("/webhooks/quickassist", express.raw({ type: "*/*", limit: "1mb" }), (req, res) => {
    const sig = Buffer.from(String(req.get("x-webhook-signature") || ""), "hex");
    const want = crypto.createHmac("sha256", secret).update(req.body).digest();
    if (sig.length !== want.length || !crypto.timingSafeEqual(sig, want)) return res.sendStatus(401);
    let event;
    try { event = JSON.parse(req.body).event; } catch { return res.sendStatus(400); }
    if (typeof event !== "string") return res.sendStatus(400);
    ch.publish(process.env.EXCHANGE, `quickassist.${event}`, req.body,
      { persistent: true, contentType: "application/json" },
      (err) => (err ? res.sendStatus(503) : res.json({ status: "accepted" })));
  });
  app.listen(Number(process.env.PORT), "127.0.0.1", () => console.error(`listening on ${process.env.PORT}`));
}

main().catch((e) => { console.error(e); process.exit(1); });
