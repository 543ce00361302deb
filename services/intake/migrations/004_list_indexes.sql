-- Indexes for the ticket list filters (newest first, keyset on seq).
CREATE INDEX tickets_priority_seq ON intake.tickets (priority, seq);
CREATE INDEX tickets_category_seq ON intake.tickets (category, seq);
CREATE INDEX tickets_created_at ON intake.tickets (created_at);
