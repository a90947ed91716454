// Palaver web chat
