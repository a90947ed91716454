// The classic stack Palaver is measured against: Express + Socket.IO + Mongoose, written the way
// such a chat server usually is (a JWT checked against the user document on every request, one
// Mongoose `create` per message, `io.to(user).emit`). It speaks the part of Palaver's contract
// the load generator uses: register, log in, POST /api/chat/send, Socket.IO `message` events.
// A baseline for bench/socketio/load.mjs, not a product: no limits, no status, no history.
//
//   npm ci --prefix bench/classic
//   MONGODB_URI=mongodb://127.0.0.1:27017/classic PORT=3100 node bench/classic/server.mjs

import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import bcrypt from "bcryptjs";
import express from "express";
import jwt from "jsonwebtoken";
import mongoose from "mongoose";
import { Server } from "socket.io";

const PORT = Number(process.env.PORT ?? 3100);
const SECRET = randomBytes(32).toString("hex");
// bcryptjs's cost; hashing is not what the bench measures.
const HASH_COST = 4;

const User = mongoose.model(
  "User",
  new mongoose.Schema({
    email: { type: String, required: true, unique: true, lowercase: true },
    password: { type: String, required: true },
    status: { type: String, enum: ["AVAILABLE", "BUSY"], default: "AVAILABLE" },
  }),
);
const Message = mongoose.model(
  "Message",
  new mongoose.Schema(
    {
      sender: { type: mongoose.Schema.Types.ObjectId, ref: "User", required: true, index: true },
      recipient: { type: mongoose.Schema.Types.ObjectId, ref: "User", required: true, index: true },
      content: { type: String, required: true, maxlength: 4000 },
      kind: { type: String, default: "user" },
    },
    { timestamps: { createdAt: "sent_at", updatedAt: false } },
  ),
);

const view = (m) => ({
  id: m._id.toString(),
  sender: m.sender.toString(),
  recipient: m.recipient.toString(),
  content: m.content,
  sent_at: m.sent_at.toISOString(),
  kind: m.kind,
});

const app = express();
app.use(express.json());
const http = createServer(app);
const io = new Server(http);

async function authenticate(token) {
  const claims = jwt.verify(token, SECRET);
  const user = await User.findById(claims.sub).lean();
  if (!user) throw new Error("Invalid or expired token");
  return user;
}

const auth = async (req, res, next) => {
  try {
    req.user = await authenticate((req.headers.authorization ?? "").replace(/^Bearer /, ""));
    next();
  } catch {
    res.status(401).json({ message: "Invalid or expired token" });
  }
};

app.post("/api/auth/register", async (req, res) => {
  const { email, password } = req.body ?? {};
  if (typeof email !== "string" || typeof password !== "string" || password.length < 8) {
    return res.status(400).json({ message: "Email and a password of at least 8 characters are required" });
  }
  try {
    const user = await User.create({ email, password: await bcrypt.hash(password, HASH_COST) });
    res.status(201).json({ message: "User registered successfully", id: user._id.toString() });
  } catch (e) {
    if (e.code === 11000) return res.status(409).json({ message: "Email already registered" });
    throw e;
  }
});

app.post("/api/auth/login", async (req, res) => {
  const { email, password } = req.body ?? {};
  const user = typeof email === "string" ? await User.findOne({ email: email.toLowerCase() }) : null;
  if (!user || typeof password !== "string" || !(await bcrypt.compare(password, user.password))) {
    return res.status(401).json({ message: "Invalid email or password" });
  }
  const token = jwt.sign({ sub: user._id.toString() }, SECRET, { expiresIn: "24h" });
  res.json({ token, user_id: user._id.toString() });
});

app.post("/api/chat/send", auth, async (req, res) => {
  const { recipient, content } = req.body ?? {};
  if (typeof content !== "string" || !content.trim() || !mongoose.isValidObjectId(recipient)) {
    return res.status(400).json({ message: "recipient and content are required" });
  }
  if (!(await User.exists({ _id: recipient }))) {
    return res.status(404).json({ message: "Recipient not found" });
  }
  const message = view(await Message.create({ sender: req.user._id, recipient, content }));
  io.to(recipient).to(req.user._id.toString()).emit("message", message);
  res.status(201).json({ message: "Message sent", id: message.id });
});

io.use(async (socket, next) => {
  try {
    socket.data.user = await authenticate(socket.handshake.auth?.token ?? "");
    next();
  } catch {
    next(new Error("Invalid or expired token"));
  }
});
io.on("connection", (socket) => socket.join(socket.data.user._id.toString()));

await mongoose.connect(process.env.MONGODB_URI ?? "mongodb://127.0.0.1:27017/classic");
http.listen(PORT, "127.0.0.1", () => console.log(`classic stack on http://127.0.0.1:${PORT}`));
