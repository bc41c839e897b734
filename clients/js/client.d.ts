// TypeScript declarations for client.js (cpc-signaling JavaScript client).
// Canonical copy: src/cpc_signaling/static/client.d.ts; clients/js/client.d.ts is identical.

export declare const VERSION: string;
/** The subprotocol offered (and selected by the server): "cpc.v1". */
export declare const SUBPROTOCOL: string;

export type MessageType =
  | "JoinDocument"
  | "LeaveDocument"
  | "PresenceUpdate"
  | "CursorUpdate"
  | "SelectionUpdate"
  | "TypingIndicator"
  | "Error"
  | "Annotation"
  | "Comment"
  | "PresenceStatus";

export declare const MESSAGE_TYPES: readonly MessageType[];

/** A position in the document: 0-based line and column. */
export interface Position {
  line: number;
  column: number;
}

/** A selection; `start` equal to `end` means no selection. */
export interface Selection {
  start: Position;
  end: Position;
}

/** RFC 3339 date-time, e.g. "2026-01-01T12:00:00.000Z". */
export type Timestamp = string;

interface DocumentFields {
  document_id: string;
  user_id: string;
}

/** A user's info: name, avatar URL, colour, ... (a JSON object of at most 1 KiB). */
export type UserInfo = { [key: string]: unknown };

export interface JoinDocument extends DocumentFields {
  type: "JoinDocument";
  /** The user's info, present only when the user has some (an extension of the protocol). */
  info?: UserInfo;
}
export interface LeaveDocument extends DocumentFields {
  type: "LeaveDocument";
}
export interface PresenceUpdate extends DocumentFields {
  type: "PresenceUpdate";
  cursor: Position;
  selection: Selection;
  is_typing: boolean;
  timestamp: Timestamp;
}
export interface CursorUpdate extends DocumentFields {
  type: "CursorUpdate";
  position: Position;
  timestamp: Timestamp;
}
export interface SelectionUpdate extends DocumentFields {
  type: "SelectionUpdate";
  selection: Selection;
  timestamp: Timestamp;
}
export interface TypingIndicator extends DocumentFields {
  type: "TypingIndicator";
  is_typing: boolean;
  timestamp: Timestamp;
}
export interface Annotation extends DocumentFields {
  type: "Annotation";
  position: Position;
  content: string;
  timestamp: Timestamp;
}
export interface Comment extends DocumentFields {
  type: "Comment";
  position: Position;
  content: string;
  timestamp: Timestamp;
}
export interface PresenceStatus extends DocumentFields {
  type: "PresenceStatus";
  /** "online", "away", "busy" by convention; any 1-64 character string. */
  status: string;
  timestamp: Timestamp;
}
export interface ErrorMessage {
  type: "Error";
  code: "PARSE_ERROR" | "AUTH_ERROR" | "DOCUMENT_ERROR" | "CONNECTION_ERROR" | string;
  message: string;
}

export type DocumentMessage =
  | JoinDocument
  | LeaveDocument
  | PresenceUpdate
  | CursorUpdate
  | SelectionUpdate
  | TypingIndicator
  | Annotation
  | Comment
  | PresenceStatus;
export type Message = DocumentMessage | ErrorMessage;
export type PresenceMessage =
  | PresenceUpdate
  | CursorUpdate
  | SelectionUpdate
  | TypingIndicator
  | PresenceStatus;
export type Note = Annotation | Comment;

/** What the client knows of another user present in a document. Replaced (not mutated) on change. */
export interface Presence {
  userId: string;
  /** The user's info (from their token, or their join on an open server); null when none. */
  info: UserInfo | null;
  cursor: Position | null;
  /** null until set; a selection with start === end means nothing is selected. */
  selection: Selection | null;
  isTyping: boolean;
  /** null until the user sent a PresenceStatus (treat as "online"). */
  status: string | null;
  /** Local clock (ms since epoch) of the last change. */
  updatedAt: number;
  /** The `timestamp` of the last presence message, as the sender stamped it. */
  timestamp: Timestamp | null;
}

export type TokenProvider = () => string | Promise<string>;

export interface ClientOptions {
  /** The user to speak as (a UUID). Default: the token's `sub`, else a random UUID. */
  userId?: string;
  /** A JWT, or a function called before each (re)connect for a fresh one. */
  token?: string | TokenProvider;
  /**
   * How the token travels: "protocol" (default) offers the subprotocols
   * ["cpc.v1", "cpc.token.<JWT>"], which keeps it out of URLs and logs; "query" sends
   * ?token=... (for a server or proxy that does not pass the subprotocol header on).
   */
  tokenIn?: "protocol" | "query";
  /** This user's info, sent with every join; honoured by a server without JWT (a token's `info` claim wins). */
  info?: UserInfo;
  /** Minimum ms between two cursor (and two selection) updates; latest wins. 0 disables. Default 50. */
  throttleMs?: number;
  /** Reconnect after a lost connection, re-join, rebuild the presence maps. Default true. */
  reconnect?: boolean;
  /** First reconnect delay ceiling in ms (full jitter, doubling). Default 250. */
  backoffInitialMs?: number;
  /** Largest reconnect delay ceiling in ms. Default 10000. */
  backoffMaxMs?: number;
  /** Comments and annotations kept per document (oldest dropped). Default 1000. */
  maxNotes?: number;
  /** A WebSocket constructor; default globalThis.WebSocket. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface CloseInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

type Listener<A extends unknown[]> = (...args: A) => void;
type Unsubscribe = () => void;

export interface ClientEvents {
  JoinDocument: [JoinDocument];
  LeaveDocument: [LeaveDocument];
  PresenceUpdate: [PresenceUpdate];
  CursorUpdate: [CursorUpdate];
  SelectionUpdate: [SelectionUpdate];
  TypingIndicator: [TypingIndicator];
  Error: [ErrorMessage];
  Annotation: [Annotation];
  Comment: [Comment];
  PresenceStatus: [PresenceStatus];
  message: [Message];
  open: [];
  close: [CloseInfo];
  reconnecting: [{ attempt: number; delayMs: number; code: number }];
  reconnected: [{ attempt: number }];
  state: [ClientState];
}

export interface DocumentEvents {
  /** A snapshot was applied (the first join and every re-join). */
  sync: [Message[]];
  join: [Presence];
  leave: [string, Presence];
  presence: [Presence, PresenceMessage];
  note: [Note];
  message: [DocumentMessage];
  /** false when the connection dropped (the map is stale), true when re-joined. */
  connection: [boolean];
  /** A re-join after a reconnect was refused (e.g. the document is full): the session is over. */
  refused: [JoinError];
  /** The server refused a note sent from here (too long, rate limited, ...): it left `notes`. */
  noteRefused: [Note, ErrorMessage];
}

declare class Emitter<E extends { [K in keyof E]: unknown[] }> {
  on<K extends keyof E>(type: K, listener: Listener<E[K]>): Unsubscribe;
  once<K extends keyof E>(type: K, listener: Listener<E[K]>): Unsubscribe;
  off<K extends keyof E>(type: K, listener: Listener<E[K]>): void;
}

export declare class DocumentSession extends Emitter<DocumentEvents> {
  readonly id: string;
  readonly userId: string;
  /** Other users present, oldest join first. This client's own user is not in it. */
  users: ReadonlyMap<string, Presence>;
  /** Annotations and comments, oldest first, this client's own included. */
  notes: readonly Note[];
  /** The raw messages of the last snapshot, ending with the own-join acknowledgement. */
  snapshot: readonly Message[];
  joined: boolean;
  /** Throttled (latest wins). Returns false if dropped because offline (re-sent after re-join). */
  cursor(position: Position): boolean;
  /** Throttled (latest wins); start === end clears the selection. */
  select(start: Position, end: Position): boolean;
  /** Cursor, selection and typing in one message; throttled. */
  presence(update: { cursor: Position; selection: Selection; isTyping: boolean }): boolean;
  typing(isTyping?: boolean): boolean;
  status(status: string): boolean;
  /** Also appended to `notes` (the server does not echo it). Throws ClientError when offline. */
  annotate(position: Position, content: string): boolean;
  /** Also appended to `notes`. Throws ClientError when offline. */
  comment(position: Position, content: string): boolean;
  leave(): Promise<void>;
  /** Send pending throttled updates now. */
  flush(): void;
}

export declare class CpcClient extends Emitter<ClientEvents> {
  /** `url` defaults to ws(s)://<page host>/ws in a browser. */
  constructor(url?: string, options?: ClientOptions);
  constructor(options: ClientOptions);
  readonly url: string;
  readonly options: Required<Omit<ClientOptions, "token" | "userId" | "WebSocket" | "info">> &
    ClientOptions;
  readonly userId: string;
  readonly state: ClientState;
  readonly connected: boolean;
  readonly documents: ReadonlyMap<string, DocumentSession>;
  document(documentId: string): DocumentSession | undefined;
  connect(): Promise<this>;
  close(): void;
  /** Resolves at the own-join acknowledgement with the snapshot applied; rejects with JoinError. */
  join(documentId: string): Promise<DocumentSession>;
  leave(documentId: string): Promise<void>;
  sendMessage(message: DocumentMessage): boolean;
  sendRaw(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  sendPresenceUpdate(
    documentId: string,
    update: { cursor: Position; selection: Selection; isTyping: boolean },
  ): boolean;
  sendCursorUpdate(documentId: string, position: Position): boolean;
  sendSelectionUpdate(documentId: string, start: Position, end: Position): boolean;
  sendTypingIndicator(documentId: string, isTyping?: boolean): boolean;
  sendPresenceStatus(documentId: string, status: string): boolean;
  sendAnnotation(documentId: string, position: Position, content: string): boolean;
  sendComment(documentId: string, position: Position, content: string): boolean;
}

export declare class ClientError extends Error {}
export declare class JoinError extends ClientError {
  readonly code: string;
  readonly error: ErrorMessage;
}

export declare function timestamp(): Timestamp;
export declare function defaultUrl(): string | undefined;
export declare function tokenSubject(token: string): string | undefined;
export declare function decode(text: string): Message | undefined;
export declare function encode(message: Message): string;

export default CpcClient;
